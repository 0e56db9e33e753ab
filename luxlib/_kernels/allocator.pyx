"""A caching allocator for the NumPy arrays luxlib's compiled kernels create.

Blocks of 1 MiB and more (up to the limit) come from ``mmap`` and, when the array
that used one is freed, are kept for the next allocation of about the same size
instead of being returned to the kernel. A fresh block costs a page fault and the kernel zeroing
each page on first touch (at 64 MiB that is as long as a relu over the data);
a kept block is already mapped. Idle blocks are bounded by a byte limit (oldest
evicted first). Smaller blocks, and blocks the limit could never keep (all of them
with the cache off), go to ``malloc`` as NumPy's own allocator would.

It is a NEP 49 ``PyDataMem_Handler``: :func:`activate` makes it the handler of the
current context (luxlib does so around its looped implementations), NumPy records
the handler on every array it allocates and frees the array's data through it,
whenever and wherever that array dies. Arrays are ordinary (``OWNDATA``, no base).
"""

from cpython.pycapsule cimport PyCapsule_New

cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <pthread.h>
    #include <sys/mman.h>
    #include <unistd.h>
    #include "pythread.h"

    /* Every block starts LX_HEADER bytes before the pointer handed to NumPy with
       its capacity and how it was obtained: NumPy's ``size`` argument to free is
       not relied on. 64 bytes keep the data 64-byte aligned. */
    #define LX_HEADER 64
    #define LX_POOL_MIN ((size_t)1 << 20)   /* from here on: mmap'd and cached */
    #define LX_GRAIN ((size_t)1 << 16)      /* cached capacities are multiples of this */
    #define LX_HUGE ((size_t)4 << 20)       /* from here on: ask for transparent huge pages */
    #define LX_SLOTS 64
    #define LX_MALLOCED 0x6c786d616c6c6f63ULL
    #define LX_MAPPED 0x6c786d6d61707064ULL

    typedef struct { size_t cap; unsigned long long kind; } lx_header;

    typedef struct {
        void *ptr[LX_SLOTS];   /* idle blocks, oldest first */
        size_t cap[LX_SLOTS];
        int n;
        size_t idle_bytes, limit, hits, misses;
    } lx_pool_t;
    static lx_pool_t lx_pool;
    static PyThread_type_lock lx_lock;

    static lx_header *lx_head(void *p) { return (lx_header *)((char *)p - LX_HEADER); }

    static size_t lx_page(void) {
        long page = sysconf(_SC_PAGESIZE);
        return page > LX_HEADER ? (size_t)page : 4096;
    }

    /* A new mapped block of capacity ``cap`` (a multiple of LX_GRAIN): one page in
       front holds the header, the data is page aligned. */
    static void *lx_map(size_t cap) {
        size_t page = lx_page();
        char *base = (char *)mmap(NULL, cap + page, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == (char *)MAP_FAILED) return NULL;
    #ifdef MADV_HUGEPAGE
        if (cap >= LX_HUGE) madvise(base + page, cap, MADV_HUGEPAGE);  /* a hint: errors ignored */
    #endif
        lx_header *h = (lx_header *)(base + page - LX_HEADER);
        h->cap = cap;
        h->kind = LX_MAPPED;
        return base + page;
    }

    static void lx_unmap(void *p, size_t cap) {
        size_t page = lx_page();
        munmap((char *)p - page, cap + page);
    }

    /* Take the smallest idle block that holds ``cap`` bytes and wastes at most a
       quarter; NULL when there is none. */
    static void *lx_take(size_t cap) {
        void *p = NULL;
        PyThread_acquire_lock(lx_lock, WAIT_LOCK);
        int best = -1;
        for (int i = 0; i < lx_pool.n; i++) {
            size_t c = lx_pool.cap[i];
            if (c >= cap && c - cap <= cap / 4 && (best < 0 || c < lx_pool.cap[best])) best = i;
        }
        if (best >= 0) {
            p = lx_pool.ptr[best];
            lx_pool.idle_bytes -= lx_pool.cap[best];
            lx_pool.n--;
            memmove(lx_pool.ptr + best, lx_pool.ptr + best + 1, (lx_pool.n - best) * sizeof(void *));
            memmove(lx_pool.cap + best, lx_pool.cap + best + 1, (lx_pool.n - best) * sizeof(size_t));
            lx_pool.hits++;
        } else {
            lx_pool.misses++;
        }
        PyThread_release_lock(lx_lock);
        return p;
    }

    /* Evict the oldest idle blocks until ``extra`` more bytes and ``slots`` more
       blocks fit. Returns how many were moved to ``out``. */
    static int lx_evict(size_t extra, int slots, void **out, size_t *out_cap) {
        int k = 0;
        while (lx_pool.n > 0 && (lx_pool.n + slots > LX_SLOTS || lx_pool.idle_bytes + extra > lx_pool.limit)) {
            out[k] = lx_pool.ptr[0];
            out_cap[k++] = lx_pool.cap[0];
            lx_pool.idle_bytes -= lx_pool.cap[0];
            lx_pool.n--;
            memmove(lx_pool.ptr, lx_pool.ptr + 1, lx_pool.n * sizeof(void *));
            memmove(lx_pool.cap, lx_pool.cap + 1, lx_pool.n * sizeof(size_t));
        }
        return k;
    }

    /* Keep a freed mapped block for later, or unmap it when it does not fit the limit. */
    static void lx_put(void *p, size_t cap) {
        void *victims[LX_SLOTS];
        size_t victim_cap[LX_SLOTS];
        int keep;
        PyThread_acquire_lock(lx_lock, WAIT_LOCK);
        keep = cap <= lx_pool.limit;
        int k = keep ? lx_evict(cap, 1, victims, victim_cap) : 0;
        if (keep) {
            lx_pool.ptr[lx_pool.n] = p;
            lx_pool.cap[lx_pool.n++] = cap;
            lx_pool.idle_bytes += cap;
        }
        PyThread_release_lock(lx_lock);
        for (int i = 0; i < k; i++) lx_unmap(victims[i], victim_cap[i]);  /* outside the lock */
        if (!keep) lx_unmap(p, cap);
    }

    /* A block from malloc (calloc when ``zero``), with NumPy's huge page hint for
       large ones: what NumPy's own allocator does. */
    static void *lx_plain(size_t size, int zero) {
        if (size > (size_t)-1 - LX_HEADER) return NULL;
        char *base = (char *)(zero ? calloc(1, size + LX_HEADER) : malloc(size + LX_HEADER));
        if (base == NULL) return NULL;
        lx_header *h = (lx_header *)base;
        h->cap = size;
        h->kind = LX_MALLOCED;
    #ifdef MADV_HUGEPAGE
        if (size >= LX_HUGE) {
            size_t page = lx_page(), skip = page - (size_t)(base + LX_HEADER) % page;
            madvise(base + LX_HEADER + skip, (size - skip) / page * page, MADV_HUGEPAGE);
        }
    #endif
        return base + LX_HEADER;
    }

    /* The capacity of a block worth caching for ``size`` bytes, or 0: too small, or too
       large for the limit (then it could never be kept, and malloc, which reuses freed
       memory on its own below its mmap threshold, serves it better than a fresh map). */
    static size_t lx_cacheable(size_t size) {
        if (size < LX_POOL_MIN || size > (size_t)-1 - 2 * LX_GRAIN) return 0;
        size_t cap = (size + LX_GRAIN - 1) / LX_GRAIN * LX_GRAIN;
        return cap <= lx_pool.limit ? cap : 0;
    }

    static void *lx_malloc(void *ctx, size_t size) {
        (void)ctx;
        size_t cap = lx_cacheable(size);
        if (cap == 0) return lx_plain(size, 0);
        void *p = lx_take(cap);
        return p != NULL ? p : lx_map(cap);
    }

    static void lx_free(void *ctx, void *p, size_t size) {
        (void)ctx; (void)size;
        if (p == NULL) return;
        lx_header *h = lx_head(p);
        if (h->kind == LX_MAPPED) lx_put(p, h->cap);
        else free(h);
    }

    static void *lx_calloc(void *ctx, size_t nelem, size_t elsize) {
        (void)ctx;
        if (elsize != 0 && nelem > (size_t)-1 / elsize) return NULL;
        size_t size = nelem * elsize;
        size_t cap = lx_cacheable(size);
        if (cap == 0) return lx_plain(size, 1);
        void *p = lx_take(cap);
        if (p == NULL) return lx_map(cap);  /* fresh pages are zero */
        memset(p, 0, size);
        return p;
    }

    static void *lx_realloc(void *ctx, void *p, size_t size) {
        if (p == NULL) return lx_malloc(ctx, size);
        size_t cap = lx_head(p)->cap;
        if (size <= cap) return p;
        void *q = lx_malloc(ctx, size);
        if (q == NULL) return NULL;
        memcpy(q, p, cap);
        lx_free(ctx, p, cap);
        return q;
    }

    static PyDataMem_Handler lx_handler = {
        "luxlib_caching_allocator", 1, {NULL, lx_malloc, lx_calloc, lx_realloc, lx_free}
    };

    /* A child forked while another thread held the lock would wait forever. */
    static void lx_after_fork_child(void) { lx_lock = PyThread_allocate_lock(); }

    static int lx_init(void) {
        lx_lock = PyThread_allocate_lock();
        if (lx_lock == NULL || pthread_atfork(NULL, NULL, lx_after_fork_child) != 0) return -1;
        return 0;
    }

    /* Set the byte limit and drop the idle blocks over it (all of them for 0). */
    static void lx_set_limit(size_t limit) {
        void *victims[LX_SLOTS];
        size_t victim_cap[LX_SLOTS];
        PyThread_acquire_lock(lx_lock, WAIT_LOCK);
        lx_pool.limit = limit;
        int k = lx_evict(0, 0, victims, victim_cap);
        PyThread_release_lock(lx_lock);
        for (int i = 0; i < k; i++) lx_unmap(victims[i], victim_cap[i]);
    }
    """
    ctypedef struct PyDataMem_Handler:
        pass
    PyDataMem_Handler lx_handler
    int lx_init() except -1
    void lx_set_limit(size_t limit)
    ctypedef struct lx_pool_t:
        int n
        size_t idle_bytes, limit, hits, misses
    lx_pool_t lx_pool
    size_t LX_POOL_MIN
    object PyDataMem_SetHandler(object handler)

lx_init()

#: blocks of this many bytes and more are cached
POOL_MIN_BYTES = LX_POOL_MIN

cdef object _capsule = PyCapsule_New(<void *>&lx_handler, b"mem_handler", NULL)


def activate():
    """Make the caching allocator NumPy's handler in this context; return the previous one."""
    return PyDataMem_SetHandler(_capsule)


def restore(previous):
    """Give the context back the handler :func:`activate` returned."""
    PyDataMem_SetHandler(previous)


def set_limit(size_t limit):
    """Keep at most ``limit`` bytes of idle blocks (0: keep none); evict what is over."""
    lx_set_limit(limit)


def info():
    """The cache's counters: limit, idle bytes and blocks, hits and misses."""
    return {
        "limit": lx_pool.limit,
        "idle_bytes": lx_pool.idle_bytes,
        "idle_blocks": lx_pool.n,
        "hits": lx_pool.hits,
        "misses": lx_pool.misses,
    }
