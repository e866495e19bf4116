/* test_policy.c - what the host tier evicts: the LRU and 2Q policies on their own
 * (store/policy_lru.c, store/policy_2q.c), then through t1 (with the default, 2Q):
 * recency, chain tails before heads, pins, refs and pending blocks never evicted,
 * quotas evicting the tenant's own blocks, and 2Q keeping reused blocks through a
 * stream of new ones where LRU loses them. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "t1.h"
#include "test.h"

#define CHUNK 4096ULL

/* ---- the policy alone --------------------------------------------------------- */

/* Fake blocks: the class node i reports to the policy is classes[i]. */
static enum policy_class classes[16];
static struct policy_node nodes[16];

static enum policy_class classify_fake(const struct policy_node *n, void *arg)
{
	(void)arg;
	return classes[n - nodes];
}

static enum policy_class classify_all_tail(const struct policy_node *n, void *arg)
{
	(void)n;
	(void)arg;
	return POLICY_TAIL;
}

static struct policy *lru(uint32_t scan)
{
	struct policy_config pc = { .evict_scan = scan };
	struct policy *p = NULL;
	CHECK_RC(policy_lru_create(&pc, &p), 0);
	return p;
}

static int victim_index(struct policy *p, bool *nontail)
{
	struct policy_node *n = policy_victim(p, classify_fake, NULL, nontail);
	return n ? (int)(n - nodes) : -1;
}

TEST(lru_picks_least_recent_and_access_moves_to_front)
{
	struct policy *p = lru(0);
	for (int i = 0; i < 5; i++) {
		classes[i] = POLICY_TAIL;
		policy_insert(p, &nodes[i]);
	}
	CHECK_EQ(p->count, 5);
	bool nontail = true;
	CHECK_EQ(victim_index(p, &nontail), 0);
	CHECK(!nontail);
	policy_access(p, &nodes[0]);
	CHECK_EQ(victim_index(p, &nontail), 1);
	policy_remove(p, &nodes[1]);
	CHECK_EQ(victim_index(p, &nontail), 2);
	policy_access(p, &nodes[0]); /* already the most recent: no change */
	policy_access(p, &nodes[2]);
	policy_access(p, &nodes[3]);
	/* Order now (cold to hot): 4, 0, 2, 3. */
	CHECK_EQ(victim_index(p, &nontail), 4);
	policy_remove(p, &nodes[4]);
	CHECK_EQ(victim_index(p, &nontail), 0);
	policy_remove(p, &nodes[0]);
	policy_remove(p, &nodes[2]);
	policy_remove(p, &nodes[3]);
	CHECK_EQ(p->count, 0);
	CHECK_EQ(victim_index(p, &nontail), -1);
	policy_destroy(p);
}

TEST(lru_skips_kept_nodes_and_prefers_tails_in_its_window)
{
	struct policy *p = lru(4);
	enum policy_class c[8] = { POLICY_KEEP,    POLICY_KEEP,    POLICY_NONTAIL, POLICY_NONTAIL,
				   POLICY_NONTAIL, POLICY_TAIL,    POLICY_TAIL,    POLICY_NONTAIL };
	for (int i = 0; i < 8; i++) {
		classes[i] = c[i];
		policy_insert(p, &nodes[i]);
	}
	bool nontail = true;
	/* Kept nodes do not use up the window: candidates 2,3,4,5 -> tail 5. */
	CHECK_EQ(victim_index(p, &nontail), 5);
	CHECK(!nontail);
	policy_destroy(p);

	/* A window of 3 candidates (2,3,4) has no tail: the coldest candidate, flagged. */
	p = lru(3);
	for (int i = 0; i < 8; i++)
		policy_insert(p, &nodes[i]);
	CHECK_EQ(victim_index(p, &nontail), 2);
	CHECK(nontail);
	policy_destroy(p);

	/* Nothing evictable at all. */
	p = lru(0);
	for (int i = 0; i < 3; i++) {
		classes[i] = POLICY_KEEP;
		policy_insert(p, &nodes[i]);
	}
	CHECK_EQ(victim_index(p, &nontail), -1);
	policy_destroy(p);
	policy_destroy(NULL);
}

static struct policy *twoq(uint32_t scan)
{
	struct policy_config pc = { .evict_scan = scan };
	struct policy *p = NULL;
	CHECK_RC(policy_2q_create(&pc, &p), 0);
	return p;
}

/* Node i stands for key 1000 + i unless the test says otherwise. */
static void q_insert(struct policy *p, int i, uint64_t key)
{
	classes[i] = POLICY_TAIL;
	nodes[i].key = key;
	policy_insert(p, &nodes[i]);
}

TEST(twoq_evicts_once_seen_blocks_before_reused_ones)
{
	struct policy *p = twoq(0);
	for (int i = 0; i < 10; i++)
		q_insert(p, i, 1000 + (uint64_t)i);
	/* Read 0, 1, 2: they join the "again" list; the rest go first, oldest first,
	 * even though 0..2 are older. */
	for (int i = 0; i < 3; i++)
		policy_access(p, &nodes[i]);
	bool nontail = true;
	for (int i = 3; i < 10; i++) {
		CHECK_EQ(victim_index(p, &nontail), i);
		CHECK(!nontail);
		policy_remove(p, &nodes[i]);
	}
	/* Only reused blocks are left: least recent of them first. */
	policy_access(p, &nodes[0]);
	CHECK_EQ(victim_index(p, &nontail), 1);
	/* next_cold walks the once list, then the again list: here 1, 2, 0. */
	q_insert(p, 9, 5000);
	struct policy_node *n = policy_next_cold(p, NULL);
	int order[4], k = 0;
	for (; n && k < 4; n = policy_next_cold(p, n))
		order[k++] = (int)(n - nodes);
	CHECK_EQ(k, 4);
	CHECK(order[0] == 9 && order[1] == 1 && order[2] == 2 && order[3] == 0);
	policy_destroy(p);
}

TEST(twoq_remembers_keys_after_they_leave)
{
	struct policy *p = twoq(0);
	q_insert(p, 0, 77);
	policy_remove(p, &nodes[0]); /* evicted */
	q_insert(p, 1, 88);          /* a new key */
	q_insert(p, 0, 77);          /* 77 stored again: seen before, so it is kept longer */
	bool nontail = true;
	CHECK_EQ(victim_index(p, &nontail), 1);
	policy_remove(p, &nodes[1]);
	policy_remove(p, &nodes[0]);
	/* The history is bounded: after many other keys, 77 is new again. */
	for (uint64_t k = 0; k < 5000; k++) {
		q_insert(p, 2, 100000 + k);
		policy_remove(p, &nodes[2]);
	}
	q_insert(p, 0, 77);
	q_insert(p, 1, 88 + 1000000); /* new */
	policy_access(p, &nodes[1]);  /* now reused */
	CHECK_EQ(victim_index(p, &nontail), 0);
	policy_destroy(p);
}

TEST(twoq_keeps_a_reserve_for_once_seen_blocks)
{
	/* The once list is not drained below 5% of the blocks: one once-seen block
	 * among 16 (6%) still goes first; one among 21 (4.8%) stays, and the reused
	 * list gives up its coldest instead. */
	struct policy *p = twoq(0);
	for (int i = 0; i < 15; i++) {
		q_insert(p, i, 2000 + (uint64_t)i);
		policy_access(p, &nodes[i]);
	}
	q_insert(p, 15, 3000);
	bool nontail = true;
	CHECK_EQ(victim_index(p, &nontail), 15);
	policy_destroy(p);

	static struct policy_node more[24];
	p = twoq(0);
	for (int i = 0; i < 20; i++) {
		more[i].key = 4000 + (uint64_t)i;
		policy_insert(p, &more[i]);
		policy_access(p, &more[i]);
	}
	more[20].key = 5000;
	policy_insert(p, &more[20]);
	struct policy_node *v = policy_victim(p, classify_all_tail, NULL, &nontail);
	CHECK(v == &more[0]);
	policy_destroy(p);
}

TEST(twoq_skips_kept_nodes_and_falls_back_to_the_other_list)
{
	struct policy *p = twoq(0);
	q_insert(p, 0, 1);
	q_insert(p, 1, 2);
	policy_access(p, &nodes[1]);
	classes[0] = POLICY_KEEP; /* the only once-seen block is pinned */
	bool nontail = true;
	CHECK_EQ(victim_index(p, &nontail), 1);
	classes[1] = POLICY_KEEP;
	CHECK_EQ(victim_index(p, &nontail), -1);
	/* A FREE block (a lower tier has it) in the window is taken at once. */
	classes[0] = POLICY_TAIL;
	classes[1] = POLICY_FREE;
	q_insert(p, 2, 3);
	classes[2] = POLICY_NONTAIL;
	CHECK_EQ(victim_index(p, &nontail), 0);
	policy_destroy(p);
}

/*
 * The history against a model: with at most 8 blocks resident the history keeps
 * the last 256 keys noted (inserts and reads, repeats included), so a block stored
 * again joins the again list (aux 1) exactly when its key is among those. Then
 * 3000 blocks resident at once make the history grow several times under random
 * traffic, and every node stays on exactly one list.
 */
TEST(twoq_history_matches_a_model_and_survives_growth)
{
	enum { WINDOW = 256, KEYS = 600, OPS = 20000, BIG = 3000 };
	memset(nodes, 0, sizeof(nodes));
	struct policy *p = twoq(0);
	static uint64_t noted[OPS * 2];
	size_t nnoted = 0;
	int resident[8];
	uint64_t rkey[8];
	int nres = 0;
	uint64_t rng = 12345;
	for (int op = 0; op < OPS; op++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		unsigned r = (unsigned)(rng >> 33);
		if (nres < 8 && (r & 1)) {
			uint64_t key = 1 + (r >> 1) % KEYS;
			bool seen = false;
			for (size_t j = nnoted > WINDOW ? nnoted - WINDOW : 0; j < nnoted; j++)
				seen |= noted[j] == key;
			int slot = 0;
			while (nodes[slot].prev) /* a free node: not linked */
				slot++;
			nodes[slot].key = key;
			policy_insert(p, &nodes[slot]);
			noted[nnoted++] = key;
			CHECK_MSG(nodes[slot].aux == (seen ? 1u : 0u), "op %d: key %llu seen=%d aux=%llu",
				  op, (unsigned long long)key, seen, (unsigned long long)nodes[slot].aux);
			resident[nres] = slot;
			rkey[nres++] = key;
		} else if (nres && (r & 2)) {
			int j = (int)((r >> 2) % (unsigned)nres);
			policy_access(p, &nodes[resident[j]]);
			noted[nnoted++] = rkey[j];
		} else if (nres) {
			int j = (int)((r >> 2) % (unsigned)nres);
			policy_remove(p, &nodes[resident[j]]);
			resident[j] = resident[nres - 1];
			rkey[j] = rkey[nres - 1];
			nres--;
		}
	}
	while (nres)
		policy_remove(p, &nodes[resident[--nres]]);
	CHECK_EQ(p->count, 0);

	struct policy_node *big = calloc(BIG, sizeof(*big));
	CHECK(big);
	for (int i = 0; i < BIG; i++) {
		big[i].key = (uint64_t)i * 7919 % 4001;
		policy_insert(p, &big[i]);
		if (i % 3 == 0)
			policy_access(p, &big[i / 2]);
	}
	size_t walked = 0;
	for (struct policy_node *n = policy_next_cold(p, NULL); n; n = policy_next_cold(p, n))
		walked++;
	CHECK_EQ(walked, (size_t)BIG);
	bool nontail;
	for (int i = 0; i < BIG; i++) {
		struct policy_node *v = policy_victim(p, classify_all_tail, NULL, &nontail);
		CHECK(v != NULL);
		policy_remove(p, v);
	}
	CHECK_EQ(p->count, 0);
	CHECK(policy_victim(p, classify_all_tail, NULL, &nontail) == NULL);
	policy_destroy(p);
	free(big);
}

/* ---- through t1 ------------------------------------------------------------------ */

static kvt_key key_of(uint64_t id)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	for (int i = 0; i < 8; i++)
		k.b[i] = (uint8_t)(id >> (8 * i));
	k.b[15] = 0x5a;
	return k;
}

static struct t1_key tkey(uint32_t tenant, uint64_t id)
{
	struct t1_key k = { .tenant = tenant, .key = key_of(id) };
	return k;
}

static struct t1 *open_t1(uint64_t chunks, uint32_t scan, uint64_t quota)
{
	struct t1_config cfg = {
		.capacity = chunks * CHUNK, .chunk_size = CHUNK, .evict_scan = scan,
		.default_quota = quota,
	};
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	return t;
}

/* Store block id (parent pid, 0 = none) of len bytes and commit it. */
static struct t1_block *put(struct t1 *t, uint32_t tenant, uint64_t id, uint64_t pid,
			    uint64_t len)
{
	struct t1_key k = tkey(tenant, id);
	kvt_key parent = key_of(pid);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, pid ? &parent : NULL, len, NULL, &b), 0);
	t1_commit(t, b);
	return b;
}

static bool has(struct t1 *t, uint32_t tenant, uint64_t id)
{
	struct t1_key k = tkey(tenant, id);
	return t1_find(t, &k) != NULL;
}

static struct t1_stats stats(const struct t1 *t)
{
	struct t1_stats s;
	t1_get_stats(t, &s);
	return s;
}

TEST(t1_evicts_the_least_recently_used_block)
{
	struct t1 *t = open_t1(8, 0, 0);
	for (uint64_t i = 1; i <= 8; i++)
		put(t, 1, i, 0, CHUNK);
	/* Touch 1 and 2: 3 is now the coldest. */
	struct t1_key k1 = tkey(1, 1), k2 = tkey(1, 2);
	t1_touch(t, t1_find(t, &k1));
	t1_touch(t, t1_find(t, &k2));
	put(t, 1, 100, 0, CHUNK);
	CHECK(!has(t, 1, 3));
	CHECK(has(t, 1, 1) && has(t, 1, 2) && has(t, 1, 4));
	put(t, 1, 101, 0, 2 * CHUNK); /* two more: 4 and 5 */
	CHECK(!has(t, 1, 4) && !has(t, 1, 5));
	CHECK(has(t, 1, 6) && has(t, 1, 1) && has(t, 1, 100));
	struct t1_stats s = stats(t);
	CHECK_EQ(s.evictions, 3);
	CHECK_EQ(s.evicted_bytes, 3 * CHUNK);
	CHECK_EQ(s.evict_nontail, 0);
	/* t1_find does not count as an access: 6 is the coldest and goes next. */
	CHECK(has(t, 1, 6));
	put(t, 1, 102, 0, CHUNK);
	CHECK(!has(t, 1, 6));
	t1_close(t);
}

TEST(chain_tail_is_evicted_before_its_head)
{
	/* A chain of 8 (1 -> 2 -> ... -> 8, each the parent of the next), then the
	 * arena is filled with newer unrelated blocks and filled again. The chain is the
	 * coldest, so it goes first, but from its tail: what stays is always a prefix. */
	struct t1 *t = open_t1(16, 0, 0);
	for (uint64_t i = 1; i <= 8; i++)
		put(t, 1, i, i - 1, CHUNK);
	for (uint64_t i = 100; i < 108; i++)
		put(t, 1, i, 0, CHUNK);
	CHECK_EQ(stats(t).free_chunks, 0);
	for (uint64_t n = 1; n <= 7; n++) {
		put(t, 1, 200 + n, 0, CHUNK);
		for (uint64_t i = 1; i <= 8; i++)
			CHECK_MSG(has(t, 1, i) == (i <= 8 - n),
				  "after %llu evictions block %llu is %s",
				  (unsigned long long)n, (unsigned long long)i,
				  has(t, 1, i) ? "present" : "gone");
	}
	CHECK(has(t, 1, 1)); /* the head survived all of that */
	CHECK_EQ(stats(t).evict_nontail, 0);
	put(t, 1, 300, 0, CHUNK); /* now the head itself, a tail by then */
	CHECK(!has(t, 1, 1));
	CHECK(has(t, 1, 100)); /* and nothing newer */
	CHECK_EQ(stats(t).evict_nontail, 0);
	t1_close(t);
}

TEST(chain_tail_preference_survives_out_of_order_commits)
{
	/* The daemon reserves a chain in order but commits as copies finish, in any
	 * order: children link to a pending parent. */
	struct t1 *t = open_t1(8, 0, 0);
	struct t1_block *b[5];
	for (uint64_t i = 1; i <= 4; i++) {
		struct t1_key k = tkey(1, i);
		kvt_key parent = key_of(i - 1);
		CHECK_RC(t1_reserve(t, &k, i > 1 ? &parent : NULL, CHUNK, NULL, &b[i]), 0);
	}
	for (uint64_t i = 4; i >= 1; i--)
		t1_commit(t, b[i]); /* tail committed first: it is the coldest */
	for (uint64_t i = 100; i < 104; i++)
		put(t, 1, i, 0, CHUNK);
	put(t, 1, 200, 0, CHUNK);
	CHECK(!has(t, 1, 4));
	put(t, 1, 201, 0, CHUNK);
	CHECK(!has(t, 1, 3));
	CHECK(has(t, 1, 1) && has(t, 1, 2));
	CHECK_EQ(stats(t).evict_nontail, 0);
	t1_close(t);
}

TEST(chain_longer_than_the_arena_keeps_its_prefix)
{
	/* Making room for a block never evicts its own ancestors: an older unrelated
	 * block goes first, then the chain's next block is refused and 1..8 stay. */
	struct t1 *t = open_t1(8, 0, 0);
	put(t, 1, 100, 0, CHUNK);
	for (uint64_t i = 1; i <= 7; i++)
		put(t, 1, i, i - 1, CHUNK);
	put(t, 1, 8, 7, CHUNK); /* evicts 100, not 7 */
	CHECK(!has(t, 1, 100));
	struct t1_key k = tkey(1, 9);
	kvt_key parent = key_of(8);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, &parent, CHUNK, NULL, &b), -ENOSPC);
	CHECK_RC(t1_reserve(t, &k, &parent, 2 * CHUNK, NULL, &b), -ENOSPC);
	for (uint64_t i = 1; i <= 8; i++)
		CHECK(has(t, 1, i));
	struct t1_stats s = stats(t);
	CHECK_EQ(s.evictions, 1);
	CHECK_EQ(s.evict_nontail, 0);
	/* The chain's blocks are evictable again afterwards (the holds were dropped):
	 * an unrelated block takes the tail. */
	put(t, 1, 200, 0, CHUNK);
	CHECK(!has(t, 1, 8) && has(t, 1, 7));
	t1_close(t);
}

TEST(chain_longer_than_the_quota_keeps_its_prefix)
{
	struct t1 *t = open_t1(32, 0, 4 * CHUNK);
	put(t, 1, 100, 0, CHUNK); /* the tenant's older, unrelated block */
	for (uint64_t i = 1; i <= 4; i++)
		put(t, 1, i, i - 1, CHUNK);
	CHECK(!has(t, 1, 100));
	struct t1_key k = tkey(1, 5);
	kvt_key parent = key_of(4);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, &parent, CHUNK, NULL, &b), -EDQUOT);
	for (uint64_t i = 1; i <= 4; i++)
		CHECK(has(t, 1, i));
	CHECK_EQ(stats(t).evictions, 1);
	t1_close(t);
}

TEST(small_scan_window_shortens_the_chain_from_its_end)
{
	/* Window of 4, chain of 8 at the cold end: no tail among the first 4
	 * candidates, so the coldest block heads a chain. Eviction follows that chain
	 * down to its deepest block and takes it: the chain shortens from its end and
	 * its head survives, which is what prefix lookups need. */
	struct t1 *t = open_t1(8, 4, 0);
	for (uint64_t i = 1; i <= 8; i++)
		put(t, 1, i, i - 1, CHUNK);
	put(t, 1, 100, 0, CHUNK);
	CHECK(!has(t, 1, 8));
	for (uint64_t i = 1; i <= 7; i++)
		CHECK(has(t, 1, i));
	CHECK_EQ(stats(t).evict_nontail, 0);
	put(t, 1, 101, 0, CHUNK);
	CHECK(!has(t, 1, 7));
	CHECK(has(t, 1, 1) && has(t, 1, 6));
	CHECK_EQ(stats(t).evict_nontail, 0);
	t1_close(t);
}

TEST(pinned_leaf_makes_eviction_cut_the_chain_as_late_as_possible)
{
	/* When the chain's deepest block cannot go (pinned), the deepest one that can
	 * goes: the chain is cut (evict_nontail says so) but as late as possible, and
	 * its head survives. */
	struct t1 *t = open_t1(8, 4, 0);
	for (uint64_t i = 1; i <= 8; i++)
		put(t, 1, i, i - 1, CHUNK);
	struct t1_key k8 = tkey(1, 8);
	t1_pin(t, t1_find(t, &k8));
	put(t, 1, 100, 0, CHUNK);
	CHECK(!has(t, 1, 7));
	CHECK(has(t, 1, 1) && has(t, 1, 6) && has(t, 1, 8));
	CHECK_EQ(stats(t).evict_nontail, 1);
	t1_close(t);
}

TEST(parent_leaving_first_detaches_its_children)
{
	/* Delete a chain's middle, then evict everything: the children must not point
	 * at freed parents (ASan) and become tails once orphaned. */
	struct t1 *t = open_t1(8, 0, 0);
	for (uint64_t i = 1; i <= 6; i++)
		put(t, 1, i, i - 1, CHUNK);
	struct t1_key k3 = tkey(1, 3);
	CHECK_RC(t1_delete(t, &k3), 0);
	/* 1 -> 2 and 4 -> 5 -> 6 remain (3 chunks free); 2 and 6 are tails, 2 is
	 * colder, so making one more chunk of room takes 2. */
	put(t, 1, 100, 0, 4 * CHUNK);
	CHECK(!has(t, 1, 2));
	CHECK(has(t, 1, 1) && has(t, 1, 4) && has(t, 1, 5) && has(t, 1, 6));
	for (uint64_t i = 200; i < 210; i++)
		put(t, 1, i, 0, CHUNK);
	for (uint64_t i = 1; i <= 6; i++)
		CHECK(!has(t, 1, i));
	CHECK_EQ(stats(t).evict_nontail, 0);
	/* A new block under an old parent's key does not inherit its children. */
	put(t, 1, 1, 0, CHUNK);
	put(t, 1, 2, 1, CHUNK);
	t1_close(t);
}

TEST(pinned_blocks_are_never_evicted)
{
	struct t1 *t = open_t1(8, 0, 0);
	struct t1_block *b[8];
	for (uint64_t i = 0; i < 8; i++) {
		b[i] = put(t, 1, i + 1, 0, CHUNK);
		t1_pin(t, b[i]);
	}
	struct t1_key k = tkey(1, 100);
	struct t1_block *nb = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &nb), -ENOSPC);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.evictions, 0);
	CHECK_EQ(s.blocks, 8);
	CHECK_EQ(s.pinned, 8);
	CHECK_EQ(s.alloc_failures, 1);
	/* Unpin the most recent one: it is the only candidate, so it goes. */
	CHECK_RC(t1_unpin(t, b[7]), 0);
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &nb), 0);
	CHECK(!has(t, 1, 8));
	for (uint64_t i = 1; i <= 7; i++)
		CHECK(has(t, 1, i));
	t1_close(t);
}

TEST(unpinned_block_comes_back_as_the_most_recent)
{
	struct t1 *t = open_t1(4, 0, 0);
	struct t1_block *b1 = put(t, 1, 1, 0, CHUNK);
	for (uint64_t i = 2; i <= 4; i++)
		put(t, 1, i, 0, CHUNK);
	t1_pin(t, b1);
	t1_touch(t, b1); /* pinned: not in the policy, touching is harmless */
	put(t, 1, 5, 0, CHUNK);
	CHECK(has(t, 1, 1) && !has(t, 1, 2));
	CHECK_RC(t1_unpin(t, b1), 0);
	put(t, 1, 6, 0, CHUNK); /* 3 is the coldest now, not 1 */
	CHECK(has(t, 1, 1) && !has(t, 1, 3));
	t1_close(t);
}

TEST(referenced_and_pending_blocks_are_never_evicted)
{
	struct t1 *t = open_t1(8, 0, 0);
	struct t1_block *r1 = put(t, 1, 1, 0, CHUNK);
	struct t1_block *r2 = put(t, 1, 2, 0, CHUNK);
	t1_block_ref(t, r1);
	t1_block_ref(t, r2);
	struct t1_key pk = tkey(1, 3);
	struct t1_block *pend = NULL;
	CHECK_RC(t1_reserve(t, &pk, NULL, 2 * CHUNK, NULL, &pend), 0);
	for (uint64_t i = 4; i <= 7; i++)
		put(t, 1, i, 0, CHUNK);
	CHECK_EQ(stats(t).free_chunks, 0);

	/* 4 evictable chunks: asking for 5 fails and evicts nothing. */
	struct t1_key k = tkey(1, 100);
	struct t1_block *nb = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, 5 * CHUNK, NULL, &nb), -ENOSPC);
	CHECK_EQ(stats(t).evictions, 0);
	for (uint64_t i = 4; i <= 7; i++)
		CHECK(has(t, 1, i));
	/* Asking for 4 takes exactly the 4 evictable ones. */
	CHECK_RC(t1_reserve(t, &k, NULL, 4 * CHUNK, NULL, &nb), 0);
	CHECK_EQ(stats(t).evictions, 4);
	CHECK(has(t, 1, 1) && has(t, 1, 2));
	CHECK(t1_find(t, &pk) == NULL); /* pending: still invisible, but still there */
	t1_commit(t, pend);
	CHECK(has(t, 1, 3));
	t1_block_unref(t, r1);
	t1_block_unref(t, r2);
	t1_close(t);
}

TEST(quota_evicts_the_tenants_own_blocks_first)
{
	/* Tenant 2's blocks are the coldest, but tenant 1 is at its quota: tenant 1's
	 * own coldest block goes, tenant 2 is untouched although the arena has room. */
	struct t1 *t = open_t1(32, 0, 0);
	CHECK_RC(t1_set_quota(t, 1, 4 * CHUNK), 0);
	for (uint64_t i = 1; i <= 4; i++)
		put(t, 2, i, 0, CHUNK);
	for (uint64_t i = 1; i <= 4; i++)
		put(t, 1, i, 0, CHUNK);
	struct t1_key k1 = tkey(1, 1);
	t1_touch(t, t1_find(t, &k1)); /* tenant 1's LRU order: 2, 3, 4, 1 */
	put(t, 1, 5, 0, CHUNK);
	CHECK(!has(t, 1, 2));
	CHECK(has(t, 1, 1) && has(t, 1, 3) && has(t, 1, 4) && has(t, 1, 5));
	for (uint64_t i = 1; i <= 4; i++)
		CHECK(has(t, 2, i));
	put(t, 1, 6, 0, 2 * CHUNK);
	CHECK(!has(t, 1, 3) && !has(t, 1, 4));
	for (uint64_t i = 1; i <= 4; i++)
		CHECK(has(t, 2, i));
	struct t1_stats s = stats(t);
	CHECK_EQ(s.evictions, 3);
	CHECK_EQ(s.free_chunks, 32 - 8);
	t1_close(t);
}

TEST(quota_is_edquot_when_the_tenant_cannot_make_room)
{
	struct t1 *t = open_t1(32, 0, 4 * CHUNK); /* default quota for every tenant */
	struct t1_block *b[4];
	for (uint64_t i = 0; i < 4; i++)
		b[i] = put(t, 1, i + 1, 0, CHUNK);
	t1_pin(t, b[0]);
	t1_pin(t, b[1]);
	t1_block_ref(t, b[2]);
	t1_block_ref(t, b[3]);
	put(t, 2, 1, 0, CHUNK);
	struct t1_key k = tkey(1, 100);
	struct t1_block *nb = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &nb), -EDQUOT);
	CHECK_EQ(stats(t).evictions, 0);
	for (uint64_t i = 1; i <= 4; i++)
		CHECK(has(t, 1, i));
	CHECK(has(t, 2, 1));
	/* Larger than the quota itself: EDQUOT whatever is evictable; larger than the
	 * arena: EFBIG. */
	struct t1_key k2 = tkey(3, 1);
	CHECK_RC(t1_reserve(t, &k2, NULL, 4 * CHUNK + 1, NULL, &nb), -EDQUOT);
	CHECK_RC(t1_reserve(t, &k2, NULL, 33 * CHUNK, NULL, &nb), -EFBIG);
	CHECK_RC(t1_reserve(t, &k2, NULL, 4 * CHUNK, NULL, &nb), 0);
	/* Let one go: now the reserve evicts it and succeeds. */
	t1_block_unref(t, b[3]);
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &nb), 0);
	CHECK(!has(t, 1, 4));
	CHECK_EQ(stats(t).evictions, 1);
	/* An override of 0 lifts the default quota for that tenant. */
	CHECK_RC(t1_set_quota(t, 1, 0), 0);
	struct t1_key k3 = tkey(1, 101);
	CHECK_RC(t1_reserve(t, &k3, NULL, 10 * CHUNK, NULL, &nb), 0);
	CHECK_EQ(stats(t).evictions, 1);
	t1_close(t);
}

TEST(global_shortage_evicts_other_tenants_in_lru_order)
{
	struct t1 *t = open_t1(8, 0, 0);
	for (uint64_t i = 1; i <= 4; i++) {
		put(t, 1, i, 0, CHUNK);
		put(t, 2, i, 0, CHUNK);
	}
	put(t, 3, 1, 0, 3 * CHUNK); /* evicts (1,1), (2,1), (1,2) */
	CHECK(!has(t, 1, 1) && !has(t, 2, 1) && !has(t, 1, 2));
	CHECK(has(t, 2, 2) && has(t, 1, 3));
	CHECK_EQ(stats(t).evictions, 3);
	t1_close(t);
}

static struct t1 *open_policy(uint64_t chunks, enum t1_policy policy)
{
	struct t1_config cfg = { .capacity = chunks * CHUNK, .chunk_size = CHUNK,
				 .policy = policy };
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	return t;
}

/* Eight blocks stored and read, then 64 new ones stored once each through a tier of
 * 16 chunks: how many of the eight are left? */
static unsigned reused_left(enum t1_policy policy)
{
	struct t1 *t = open_policy(16, policy);
	for (uint64_t i = 1; i <= 8; i++)
		t1_touch(t, put(t, 1, i, 0, CHUNK));
	for (uint64_t i = 100; i < 164; i++)
		put(t, 1, i, 0, CHUNK);
	unsigned left = 0;
	for (uint64_t i = 1; i <= 8; i++)
		left += has(t, 1, i);
	CHECK_EQ(stats(t).blocks, 16);
	t1_close(t);
	return left;
}

TEST(twoq_keeps_reused_blocks_through_a_stream_of_new_ones_where_lru_does_not)
{
	CHECK_EQ(reused_left(T1_POLICY_2Q), 8);
	CHECK_EQ(reused_left(T1_POLICY_LRU), 0);
}

TEST(unknown_policy_is_refused)
{
	struct t1_config cfg = { .capacity = 16 * CHUNK, .chunk_size = CHUNK,
				 .policy = (enum t1_policy)7 };
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL);
	CHECK(t == NULL);
}

TEST_MAIN(lru_picks_least_recent_and_access_moves_to_front,
	  lru_skips_kept_nodes_and_prefers_tails_in_its_window,
	  twoq_evicts_once_seen_blocks_before_reused_ones, twoq_remembers_keys_after_they_leave,
	  twoq_keeps_a_reserve_for_once_seen_blocks,
	  twoq_skips_kept_nodes_and_falls_back_to_the_other_list,
	  twoq_history_matches_a_model_and_survives_growth,
	  t1_evicts_the_least_recently_used_block, chain_tail_is_evicted_before_its_head,
	  chain_tail_preference_survives_out_of_order_commits,
	  chain_longer_than_the_arena_keeps_its_prefix, chain_longer_than_the_quota_keeps_its_prefix,
	  small_scan_window_shortens_the_chain_from_its_end, pinned_leaf_makes_eviction_cut_the_chain_as_late_as_possible,
	  parent_leaving_first_detaches_its_children, pinned_blocks_are_never_evicted,
	  unpinned_block_comes_back_as_the_most_recent,
	  referenced_and_pending_blocks_are_never_evicted, quota_evicts_the_tenants_own_blocks_first,
	  quota_is_edquot_when_the_tenant_cannot_make_room,
	  global_shortage_evicts_other_tenants_in_lru_order,
	  twoq_keeps_reused_blocks_through_a_stream_of_new_ones_where_lru_does_not,
	  unknown_policy_is_refused)
