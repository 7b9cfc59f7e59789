#define _POSIX_C_SOURCE 200809L
#include "shared.h"

#include <errno.h>
#include <string.h>

int ks_tail_init(ks_tail *t)
{
    pthread_mutexattr_t attr;
    int rc;
    memset(t, 0, sizeof(*t));
    t->layout = sizeof(ks_tail);
    if ((rc = pthread_mutexattr_init(&attr)) != 0)
        return rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
#if KS_TAIL_ROBUST
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
#else
    /* Without robust mutexes a process dying mid-append would block every other one for
     * good: no shared tails on such systems (kstore opens logs exclusively there). */
    if (rc == 0)
        rc = ENOTSUP;
#endif
    if (rc == 0)
        rc = pthread_mutex_init(&t->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

int ks_tail_lock(ks_tail *t)
{
    int rc = pthread_mutex_lock(&t->mutex);
    if (rc == 0)
        return 0;
#if KS_TAIL_ROBUST
    if (rc == EOWNERDEAD) {
        /* Consistent at once: if this process dies too while rebuilding, the next one is told
         * again (EOWNERDEAD) and rebuilds from the files, which is idempotent. */
        pthread_mutex_consistent(&t->mutex);
        return KS_TAIL_OWNER_DIED;
    }
#endif
    return rc;
}

int ks_tail_unlock(ks_tail *t)
{
    return pthread_mutex_unlock(&t->mutex);
}

int ks_tail_busy(ks_tail *t)
{
    int rc = pthread_mutex_trylock(&t->mutex);
    if (rc == 0) {
        pthread_mutex_unlock(&t->mutex);
        return 0;
    }
#if KS_TAIL_ROBUST
    if (rc == EOWNERDEAD) {
        /* Locked by us now: leave the repair to the next real lock, which is told again. */
        pthread_mutex_unlock(&t->mutex);
        return 0;
    }
#endif
    return rc == EBUSY;
}
