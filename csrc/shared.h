/* The shared tail of a partition log: state that several processes appending to one partition
 * keep in a small file each of them maps (MAP_SHARED), guarded by a process-shared, robust
 * mutex in the same mapping.
 *
 * A writer locks the mutex, brings its own view of the active segment up to date when `seq`
 * moved since it last looked, appends, publishes the new state (the fields below, then `seq`)
 * and unlocks. Index entries not yet written to the index files travel in `offset_pending` /
 * `time_pending`, so a process taking over the tail never loses another's entries.
 *
 * Robust: when a process dies holding the mutex (SIGKILL mid-append), the next one to lock it
 * is told so (KS_TAIL_OWNER_DIED) and rebuilds the state from the files before appending.
 * Portable C, POSIX threads; no Python.
 */
#ifndef KSTORE_SHARED_H
#define KSTORE_SHARED_H

#include <pthread.h>
#include <stdint.h>

#define KS_TAIL_MAGIC 0x314c4941544b534bULL /* "KSKTAIL1" little-endian */
#define KS_TAIL_PENDING 128                 /* index entries that may wait outside the files */
#define KS_TAIL_FILE_SIZE 8192

#define KS_TAIL_OWNER_DIED 1

/* Robust process-shared mutexes (POSIX 2008): Linux and FreeBSD have them, macOS does not. */
#if defined(__linux__) || defined(__FreeBSD__)
#define KS_TAIL_ROBUST 1
#else
#define KS_TAIL_ROBUST 0
#endif

typedef struct ks_tail {
    uint64_t magic;              /* KS_TAIL_MAGIC once initialised (set last) */
    uint64_t layout;             /* sizeof(ks_tail): a mapping by another build is refused */
    uint64_t session;            /* random id of the process that initialised it */
    uint64_t pad0[5];
    pthread_mutex_t mutex;       /* robust, process-shared */
    uint8_t pad1[128 - (sizeof(pthread_mutex_t) % 64)];
    volatile uint64_t seq;       /* moves on every publish */
    int64_t deleted;             /* the topic was deleted: appends must stop */
    int64_t active_base;         /* base offset of the active segment */
    int64_t size;                /* bytes of the active segment */
    int64_t next_offset;         /* log end offset */
    int64_t log_start;           /* log start offset */
    int64_t recovery_point;
    int64_t last_flush_ms;
    int64_t segments_gen;        /* moves when closed segments change (retention, compaction) */
    /* SegmentAppender state of the active segment */
    int64_t bytes_since_index;
    int64_t max_timestamp;
    int64_t offset_of_max_timestamp;
    int64_t first_batch_timestamp;
    int64_t created_ms;
    int64_t last_time_entry;
    int64_t offset_entries;
    int64_t time_entries;
    int64_t offset_persisted;    /* entries already in the .index file */
    int64_t time_persisted;      /* entries already in the .timeindex file */
    int64_t appends;             /* appends published (statistics) */
    int64_t takeovers;           /* appends by another process than the previous one */
    int64_t last_pid;
    int64_t repairs;             /* times a dead owner's tail was rebuilt */
    uint8_t offset_pending[KS_TAIL_PENDING * 8];
    uint8_t time_pending[KS_TAIL_PENDING * 12];
} ks_tail;

/* Initialise the mutex (robust, process-shared) and zero the state; magic is set by the caller
 * once the state is filled in. Returns 0 or an errno. */
int ks_tail_init(ks_tail *t);
/* Lock: 0, KS_TAIL_OWNER_DIED (locked; the previous owner died holding it: the state must be
 * rebuilt before use; the mutex is already marked consistent), or an errno. */
int ks_tail_lock(ks_tail *t);
int ks_tail_unlock(ks_tail *t);
/* Whether another thread or process holds the mutex right now (a hint: it may change at once). */
int ks_tail_busy(ks_tail *t);

#endif
