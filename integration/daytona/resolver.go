package daytona

import (
	"context"
	"sync"

	"github.com/iriskvfs/iriskvfs/integration/api"
)

// Resolver serves {id} = a Daytona sandbox id through the API: one Backend
// per sandbox, kept so that its readiness check and toolbox are reused. An
// unknown sandbox answers 404 and an unreachable one 502 at the first call
// (Backend's errors), so resolving itself never fails.
func Resolver(c *Client, layout Layout) api.Resolver {
	var mu sync.Mutex
	backends := map[string]*Backend{}
	return func(_ context.Context, id string) (api.Backend, error) {
		mu.Lock()
		defer mu.Unlock()
		b, ok := backends[id]
		if !ok {
			b = &Backend{Client: c, SandboxID: id, Layout: layout}
			backends[id] = b
		}
		return b, nil
	}
}
