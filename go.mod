module github.com/iriskvfs/iriskvfs

go 1.26.8

require (
	github.com/hashicorp/golang-lru/v2 v2.0.7
	go.etcd.io/bbolt v1.4.3
	golang.org/x/sys v0.38.0
	gopkg.in/yaml.v3 v3.0.1
)
