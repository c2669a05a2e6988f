package mtasts

import (
	"context"
	"errors"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/dnsx"
)

// Agent finds the MTA-STS policy in force for a domain: the TXT record,
// then the cached policy if its id is current and it is fresh, else a
// fetch, falling back on the cached policy while it has not expired.
type Agent struct {
	DNS interface {
		TXT(context.Context, string) (dnsx.TXT, error)
	}
	Fetcher *Fetcher
	Cache   *Cache
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Result is the policy in force for a domain.
type Result struct {
	Domain string
	// Policy is nil when the domain has no policy in force (none
	// published, none cached, or mode none).
	Policy    *Policy
	ID        string
	Fetched   time.Time
	Expires   time.Time
	FromCache bool
	// Problem is a failure met on the way although a result was had: a
	// fetch that failed while the cached policy was used, or a domain
	// with a TXT record whose policy could not be had. Its Result is the
	// TLS-RPT result type.
	Problem *FetchError
}

// Lookup returns domain's policy in force. Every problem of discovery or
// fetching is in Result.Problem; the error is only a fetched policy that
// could not be cached (the Result still holds it).
func (a *Agent) Lookup(ctx context.Context, domain string) (Result, error) {
	now := a.now()
	res := Result{Domain: domain}
	cached, cerr := a.Cache.Load(domain)
	if cerr != nil {
		cached = nil // unreadable: as if there were none; a fetch replaces it
	}
	valid := cached != nil && now.Before(cached.Expires)
	useCache := func(problem *FetchError) (Result, error) {
		if !valid {
			res.Problem = problem
			return res, nil
		}
		r := Result{Domain: domain, Policy: cached.Policy, ID: cached.ID, Fetched: cached.Fetched, Expires: cached.Expires, FromCache: true, Problem: problem}
		if r.Policy.Mode == None {
			r.Policy = nil
		}
		return r, nil
	}

	txt, err := a.DNS.TXT(ctx, "_mta-sts."+domain)
	var id string
	switch {
	case err != nil && !dnsx.NotFound(err):
		return useCache(&FetchError{Domain: domain, Result: policy.ResultSTSFetchError, Err: err})
	case err != nil:
		return useCache(nil) // no record: a cached policy stays in force until it expires
	}
	id, err = ParseRecord(txt.Records)
	switch {
	case errors.Is(err, ErrNoRecord):
		return useCache(nil)
	case err != nil:
		return useCache(&FetchError{Domain: domain, Result: policy.ResultSTSPolicyInvalid, Err: err})
	}
	// A current cached policy is used until half its max_age has passed;
	// then it is refreshed, and kept if the refresh fails.
	if valid && cached.ID == id && now.Before(cached.Fetched.Add(cached.Policy.MaxAge/2)) {
		return useCache(nil)
	}
	p, err := a.Fetcher.Fetch(ctx, domain)
	if err != nil {
		var fe *FetchError
		if !errors.As(err, &fe) {
			fe = &FetchError{Domain: domain, Result: policy.ResultSTSFetchError, Err: err}
		}
		return useCache(fe)
	}
	e := &Cached{Domain: domain, ID: id, Policy: p, Fetched: now, Expires: now.Add(p.MaxAge)}
	cacheErr := a.Cache.Store(e)
	res = Result{Domain: domain, Policy: p, ID: id, Fetched: now, Expires: e.Expires}
	if p.Mode == None {
		res.Policy = nil
	}
	return res, cacheErr
}

func (a *Agent) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}
