/*
 * approval/internal.h — what the two approval store backends share.
 *
 * appr_store_t is the small interface of approval.h (create, get, decide,
 * find/consume a grant, revoke, list, prune, and the change feed). Its
 * first backend is LMDB (store.c: sub-databases of the audit store); its
 * second is PostgreSQL (pg.c: a schema in a database the operator runs,
 * shared by several replicas). Each public appr_* function in store.c
 * hands the call to apg_* when the store is a PostgreSQL one.
 */
#ifndef BULWARK_APPROVAL_INTERNAL_H
#define BULWARK_APPROVAL_INTERNAL_H

#include <lmdb.h>

#include "approval/approval.h"

typedef struct apg apg_t;

struct appr_store {
    MDB_env *env;
    MDB_dbi reqs, grants;
    bool own_env;
    apg_t *pg; /* non-NULL: the PostgreSQL backend (pg.c); the fields above are unused */
    void (*guard_enter)(void *), (*guard_leave)(void *); /* around each LMDB transaction */
    void *guard_arg;
};

/* store.c: shared helpers */
int appr_req_parse(const char *text, size_t len, appr_req_t *r);
bool appr_grant_usable(const appr_req_t *r, int64_t now_us);
appr_rc_t appr_copy(const appr_req_t *src, appr_req_t *dst);
const char *appr_claim_refusal(const appr_req_t *r); /* appr_claim: NULL = usable */

/* pg.c */
void apg_close(apg_t *p);
appr_rc_t apg_get(apg_t *p, uint64_t id, appr_req_t *out);
appr_rc_t apg_create(apg_t *p, const appr_req_t *r, char *err, size_t errsz);
appr_rc_t apg_decide(apg_t *p, uint64_t id, const appr_decision_t *d, appr_req_t *out, char *err,
                     size_t errsz);
appr_rc_t apg_close_pending(apg_t *p, uint64_t id, appr_state_t to, int64_t now_us);
appr_rc_t apg_revoke(apg_t *p, uint64_t id, const char *by, int64_t now_us, char *err,
                     size_t errsz);
appr_rc_t apg_consume(apg_t *p, uint64_t id);
appr_rc_t apg_claim(apg_t *p, uint64_t id, char *why, size_t whysz);
appr_rc_t apg_prune(apg_t *p, int64_t before_us, int64_t now_us, size_t max, size_t *pruned);
appr_rc_t apg_find_grant(apg_t *p, const appr_key_t *k, int64_t now_us,
                         bool (*skip)(void *arg, uint64_t id), void *arg, uint64_t *id,
                         int64_t *until_us);
int apg_list(apg_t *p, int filter, int64_t now_us, size_t max_scan,
             int (*fn)(void *arg, const appr_req_t *r), void *arg);
uint64_t apg_next_id(apg_t *p);
bool apg_available(apg_t *p, char *why, size_t whysz);

#endif
