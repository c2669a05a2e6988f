package relay

import (
	"container/heap"
	"time"
)

// The queue's retry times are kept in one min-heap ordered by due time,
// served by a single goroutine and one timer, instead of a time.Timer per
// message: with hundreds of thousands of messages waiting, a timer each
// costs memory (timer, closure) and start-up time, and the heap costs one
// slot and an index per message.

// schedHeap orders items by due time; each item knows its index.
type schedHeap []*item

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = int32(i), int32(j)
}
func (h *schedHeap) Push(x any) {
	it := x.(*item)
	it.hidx = int32(len(*h))
	*h = append(*h, it)
}
func (h *schedHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.hidx = -1
	return it
}

// setDueLocked makes it due at t (unix nanoseconds), waking the scheduler
// when it becomes the earliest.
func (q *queue) setDueLocked(it *item, t int64) {
	it.due = t
	if it.hidx >= 0 {
		heap.Fix(&q.sched, int(it.hidx))
	} else {
		heap.Push(&q.sched, it)
	}
	if q.sched[0] == it {
		q.kickScheduler()
	}
}

// unscheduleLocked takes it out of the heap, if it is there.
func (q *queue) unscheduleLocked(it *item) {
	if it.hidx >= 0 {
		heap.Remove(&q.sched, int(it.hidx))
	}
}

func (q *queue) kickScheduler() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// runScheduler makes items ready as they come due, until the queue stops.
func (q *queue) runScheduler() {
	defer q.workers.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		now := time.Now().UnixNano()
		for len(q.sched) > 0 && q.sched[0].due <= now {
			it := heap.Pop(&q.sched).(*item)
			q.makeReadyLocked(it)
		}
		wait := time.Hour
		if len(q.sched) > 0 {
			wait = time.Duration(q.sched[0].due - now)
		}
		q.mu.Unlock()
		t.Reset(wait)
		select {
		case <-t.C:
		case <-q.kick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-q.quit:
			return
		}
	}
}
