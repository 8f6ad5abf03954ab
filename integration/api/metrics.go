package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics, in a registry of their own.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(b Backend) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iriskvfs_http_requests_total",
			Help: "HTTP requests served, by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "iriskvfs_http_request_duration_seconds",
			Help:    "Latency of HTTP requests, by route, method and status code.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method", "code"}),
	}
	m.reg.MustRegister(m.requests, m.duration, &storeCollector{b: b},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(route, method string, status int, d time.Duration) {
	code := strconv.Itoa(status)
	m.requests.WithLabelValues(route, method, code).Inc()
	m.duration.WithLabelValues(route, method, code).Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// routeLabel is the route template of a path: a bounded set of labels, so
// that hostile paths cannot grow the metrics.
func routeLabel(path string) string {
	switch path {
	case "/healthz", "/metrics":
		return path
	}
	rest, ok := strings.CutPrefix(path, Prefix)
	if !ok {
		return "other"
	}
	id, route, ok := strings.Cut(rest, "/kv-cache/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "other"
	}
	switch route {
	case "stats", "keys", "value", "prune", "clear-scope", "fsck", "seed-instructions":
		return Prefix + "{id}/kv-cache/" + route
	}
	return "other"
}

// methodLabel bounds the method label the same way.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}

// storeCollector reads the backend's stats at scrape time.
type storeCollector struct{ b Backend }

var (
	descUp       = prometheus.NewDesc("iriskvfs_backend_up", "1 when the backend answered its stats at this scrape.", nil, nil)
	descHits     = prometheus.NewDesc("iriskvfs_cache_hits_total", "Reads served from the hot cache since the store was opened.", nil, nil)
	descMisses   = prometheus.NewDesc("iriskvfs_cache_misses_total", "Reads that went to the value file since the store was opened.", nil, nil)
	descQuota    = prometheus.NewDesc("iriskvfs_quota_rejections_total", "Writes refused by a quota since the store was opened.", nil, nil)
	descVerify   = prometheus.NewDesc("iriskvfs_verification_failures_total", "Reads refused because the fingerprint did not match, since the store was opened.", nil, nil)
	descBytes    = prometheus.NewDesc("iriskvfs_scope_bytes", "Bytes of the live keys of a scope.", []string{"scope"}, nil)
	descKeys     = prometheus.NewDesc("iriskvfs_scope_keys", "Live keys of a scope.", []string{"scope"}, nil)
	descQuotaB   = prometheus.NewDesc("iriskvfs_scope_quota_bytes", "Quota of a scope in bytes.", []string{"scope"}, nil)
	descExpired  = prometheus.NewDesc("iriskvfs_scope_expired_keys", "Expired keys of a scope not yet pruned.", []string{"scope"}, nil)
	descHotBytes = prometheus.NewDesc("iriskvfs_hot_cache_bytes", "Bytes held in the hot cache of verified values.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descHits, descMisses, descQuota, descVerify, descBytes, descKeys, descQuotaB, descExpired, descHotBytes} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.b.Stats(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(st.Hits))
	ch <- prometheus.MustNewConstMetric(descMisses, prometheus.CounterValue, float64(st.Misses))
	ch <- prometheus.MustNewConstMetric(descQuota, prometheus.CounterValue, float64(st.QuotaRejects))
	ch <- prometheus.MustNewConstMetric(descVerify, prometheus.CounterValue, float64(st.VerifyFailures))
	ch <- prometheus.MustNewConstMetric(descHotBytes, prometheus.GaugeValue, float64(st.HotBytes))
	for _, sc := range st.Scopes {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(sc.Bytes), sc.Name)
		ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, float64(sc.Keys), sc.Name)
		ch <- prometheus.MustNewConstMetric(descQuotaB, prometheus.GaugeValue, float64(sc.QuotaBytes), sc.Name)
		ch <- prometheus.MustNewConstMetric(descExpired, prometheus.GaugeValue, float64(sc.ExpiredKeys), sc.Name)
	}
}
