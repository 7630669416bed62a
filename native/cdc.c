/* Content-defined chunking (CDC): a gear rolling hash with FastCDC-style normalized cut points.
 *
 * Theory of operation. This file defines a FORMAT: the cut points it finds decide which chunks
 * deduplicate against each other, so every rule below is fixed; changing any of them (the table,
 * the seed, the hash, the masks, the size rules) changes where chunks end for every stored file.
 *
 * Gear table. gear[i], i = 0..255, is the i-th output of splitmix64 (Vigna) seeded with
 * 0x436169726E434443 ("CairnCDC"): state += 0x9E3779B97F4A7C15; z = state;
 * z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 * output z ^ (z >> 31), all mod 2^64. It is stored below as a literal, read-only table.
 *
 * Hash. For each chunk the hash starts at 0 and every byte b of the chunk updates it as
 * h = (h << 1) + gear[b] (mod 2^64). Byte b_j seen k bytes ago contributes gear[b_j] << k, so
 * after 64 more bytes it has left h entirely: h depends only on the last 64 bytes of the chunk.
 *
 * Cut rule. Let L be the length of the current chunk including the byte just hashed, with sizes
 * min <= avg <= max and avg = 2^a. No cut while L < min. For min <= L < avg, cut after the byte
 * if (h & mask_small) == 0; for avg <= L < max, cut if (h & mask_large) == 0; at L == max, cut.
 * The next chunk starts after the cut byte with h = 0 again. A stream's trailing bytes after its
 * last cut form a final chunk of 1..max bytes (that one is the caller's business: finish()).
 *
 * Masks. Both take the TOP bits of h, the ones that depend on all 64 bytes of the window:
 * mask_small has a + n one-bits and mask_large a - n, n being the normalization level (0..3), so
 * mask_large's bits are a subset of mask_small's. Below avg a cut is 2^2n times less likely than
 * after it, which squeezes the chunk sizes towards avg (FastCDC's normalized chunking).
 *
 * Sizes (checked by cairn_cdc_init, mirrored in cluster/codec/chunker.py): 64 <= min <= avg <=
 * max, min < max, avg a power of two, max < 2^40, 0 <= n <= 3 (a - n >= 1 then always holds,
 * since avg >= 64).
 *
 * Streaming. The state keeps the hash and the length of the unfinished chunk, so the cut points
 * of a stream do not depend on how it is split into buffers for cairn_cdc_scan.
 *
 * Speed, without changing any result:
 * - Cut-point skipping: since only hashes at L >= min are tested and those depend only on the
 *   last 64 bytes, the first min - 64 bytes of every chunk are not hashed at all; hashing starts
 *   at L = min - 63 from h = 0. (So state.hash may differ from the hash of the whole chunk while
 *   L < min; from L = min on the two are equal.)
 * - Separate loops per region ([min-63, min) untested, [min, avg) with mask_small, [avg, max)
 *   with mask_large), each with a fixed mask and a fixed end, unrolled by 8; the test is a
 *   branch that is almost never taken.
 * - Interleaved chains: one hash chain costs a dependent shift-add per byte (latency-bound at
 *   about a byte per cycle). On long stretches the region is cut into rounds of CDC_CHAINS
 *   consecutive blocks (of CDC_BLOCK_LONG bytes, or CDC_BLOCK_SHORT when a long round does not
 *   fit), hashed in lockstep by independent chains. Chain c > 0 rebuilds its starting hash from
 *   the 63 bytes before its block (exact, by the 64-byte window); chain 0 carries the true hash,
 *   and the next round's chain 0 starts from the last chain's final hash. When chain c hits,
 *   only chains before it can still hold an earlier cut; they are finished one by one.
 */
#include "internal.h"

#if defined(__GNUC__)
#define CDC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CDC_INLINE static inline __attribute__((always_inline))
#else
#define CDC_UNLIKELY(x) (x)
#define CDC_INLINE static inline
#endif

#define CDC_WINDOW 64        /* bytes that a hash value depends on */
#define CDC_CHAINS 4         /* independent hash chains hashed in lockstep */
#define CDC_BLOCK_LONG 16384 /* bytes per chain per round on long stretches (multiples of 8, */
#define CDC_BLOCK_SHORT 4096 /* >= CDC_WINDOW); short rounds when long ones do not fit */
#define CDC_LIMIT ((uint64_t)1 << 40)

static const uint64_t gear[256] = {
    0xe901e125f86fdfb0u, 0xdedd9e0c880c9caeu, 0x5c05ee3a748a0f7bu,
    0x63cd7b23f9b238c1u, 0xb656021bb5d16884u, 0xf06ca7e704825a49u,
    0x6e7f94ed46c0ac3fu, 0x24d335ac622a1b20u, 0x4ca3f90a04c6c3d0u,
    0x0d35d89c4b69c3ceu, 0x51ce68d2e86db031u, 0xa2f26ae9a324ece2u,
    0x1601d81f5e7a221fu, 0x6b4559fff51bcae2u, 0x618c8ec73741765du,
    0x0e520484af554d65u, 0x31e5e5058ea4ddd9u, 0x9a12bea468ccf29bu,
    0x2417b27e190cbceau, 0x7cfa4b6418588b59u, 0xb0a30460827aba83u,
    0x2d2cfc071dc23025u, 0x1fedbf2839342451u, 0x92fe1f9d0f6b78c8u,
    0x2851b2a5027729fau, 0x584e5309c268a2bdu, 0x620be26e8814ab7bu,
    0xca1f7ae30e9b36d4u, 0xa886a2dac4aea7e1u, 0xc9f9c8bef3dd0a93u,
    0x57fcb90b81b234c3u, 0x324107d62addc36bu, 0xcd7aab1a23ff0fabu,
    0xd710ba717002be71u, 0x082261896473c061u, 0x730e7db61e01c851u,
    0xc8643f7cb0e9d8f5u, 0xf7bcc41f1f83b9e6u, 0xb8352b988c6a5074u,
    0xac4622a5a0f7158eu, 0xc75bd54cf6ec652eu, 0x1a311b8baa727363u,
    0xd7f5c935fd7e28d7u, 0x8cfce30aafe94d04u, 0x8c4df8a124cd646du,
    0xdd87848571cf9291u, 0x4b7da577753e50d4u, 0x4654d9f7858032ddu,
    0x3dce4c6655944936u, 0x5d18a6b2bdd74a99u, 0x68ff6dc104de5dd6u,
    0xb89a19a80481913au, 0x2e205f45588dca07u, 0xd44fb4acade4b42cu,
    0xd541353295250536u, 0x1de4da0c57243bcbu, 0xb9ed013c5b023e8au,
    0x863630d4ffde9c07u, 0x17d793f89b75fc15u, 0x84f012bcb37d9a25u,
    0xb895f4090c7f54d0u, 0xc24f9e753d13a99bu, 0x785a83774a13f198u,
    0x9c8cb1af8892cf4fu, 0x01faba84166d8c99u, 0x87506c00ac532c38u,
    0x48bf8cb42fe034fdu, 0x7c19d3882a8672bau, 0x5a8cc225adf6d068u,
    0x3c45ed7bda02826fu, 0x1df54b6ae69c10e6u, 0x43c12a3b38f6b59bu,
    0x0e2992f159662f9au, 0xe26f25af60550958u, 0xc87df4edb37998d4u,
    0xda83547d1c629d0bu, 0x955c4b4414a70684u, 0xa9fa2de0a1dc2a9du,
    0x3917dd911fd60d23u, 0xe25e2a229be2d815u, 0x19a169ce086d301bu,
    0x81cdb4da9dc46a42u, 0xbc372a26cf450cf3u, 0xa7ded0b5a92f4e92u,
    0x23ed447adffa3909u, 0xf3af15477bf60d1du, 0x3f7fb3b9ee51ecaau,
    0x265417221e496518u, 0xd85fa82b066ba79au, 0x036e9a387ebec673u,
    0x6f7982f4f6567ccau, 0x2e749d678a290e97u, 0xa850e419f452738au,
    0x443f4b61517d9451u, 0x88cf3d9ca9a056e2u, 0x317cd666d9d417d2u,
    0x02fb0cac4222a0c2u, 0xbed8218b2f50ac26u, 0x463b05eeca423c47u,
    0x583d7de0f888a342u, 0x51ec8811320a9406u, 0x1efd03a1e0a7c592u,
    0x256a6056edd0bb31u, 0x3f1b4fb76a6cdd1fu, 0x197ff66266c9601au,
    0xa4ffadb69ecd3b77u, 0xde0b4d966afb0904u, 0x8d44fd2fc1f97327u,
    0xab98dd3965c5eec1u, 0x5f3ea6beb7af74cau, 0x7facf464e88c3deeu,
    0x9c544e8e401673fau, 0x3a9866e37945865cu, 0x64855fe8b97958beu,
    0x87a5875102e3997cu, 0xdd2c1c3a8468a501u, 0x8d841ba5b68a67c3u,
    0xc725ae14d81346d7u, 0x575c6aa49fc4ac4eu, 0x867b7a64fac6f073u,
    0xbfc0b9b06c2ee596u, 0xf7b801fa8fa371bdu, 0xd46c385b37b8be0fu,
    0x378b947a86331d28u, 0xf1ef3e71049523c9u, 0xda3042be469dc2e3u,
    0xdeaf7996103d1374u, 0x835827af45c9d559u, 0xbf5676bc54244b58u,
    0x4931b1091e3d49aau, 0x3c6b5c6883815555u, 0xac105d86d2faee54u,
    0x736ab29a5ebd6da7u, 0xece70e72ec05468cu, 0x6d28dcca088b8ee4u,
    0xaf38aa0da0460064u, 0xd79b24c00a743541u, 0x2275690c6c3a80fcu,
    0x375ce6e71ed7e70au, 0xc36a2da2ddbc2bdeu, 0x8c712582068ec36bu,
    0xf246447687044629u, 0x8275f9c87bcb08abu, 0x35df4561203c8da0u,
    0x4c0ee7c780745f32u, 0xc5a7c4a47794a8f5u, 0xb5b41c8b9874d557u,
    0x33e46e654f648a3bu, 0xff77fb22f0fa5f55u, 0x6bd91355e61bb70cu,
    0xd8818a694ed09c87u, 0x47f2e2716994745eu, 0xe4f042ca9d7e6c3du,
    0x0021d67660739571u, 0xf2d0a58078a99116u, 0x229a5d8813ed86cbu,
    0x2457957cb3a59c85u, 0x2e8a44dd9fcc24b7u, 0xc1ac36be06b5dfcbu,
    0xc46fc49b444ec46eu, 0x74b59d83f45051b7u, 0x0696bdcf23440ea6u,
    0x1d62234609faaf04u, 0x1d988b448bca5b41u, 0x15d96ad10bdfa9b5u,
    0xc9519b88243203fcu, 0xec6f2aef60ba465eu, 0xde089e99f2ca8307u,
    0x28f12bd4f1ea107eu, 0x79a545ac897e95b9u, 0x73cff1cd38c7652eu,
    0xd55ea0587f1525b8u, 0x6c507195a2b5c46bu, 0xe2a8846d23e4b652u,
    0x455088c5b03f65d0u, 0xae592710ee785617u, 0x6e34b7a977bfe0aeu,
    0xebb8a966ab10e2b9u, 0x6b4f34dffa0f1964u, 0xb9b16768e9e8aac7u,
    0x58d352f29ac8acd5u, 0xc15194bfdbffa36eu, 0x63b2c7db28e3805bu,
    0x97887d71e7337344u, 0x90d1a7db08947138u, 0xde01d02819644870u,
    0xd0697cee212fb014u, 0xa13e2ed4a720da5eu, 0xbf7cefb6c02a6108u,
    0x735292353e0f3126u, 0xbfba152023c26024u, 0x27e8592437d5766du,
    0x916a1f1bbf49a9aau, 0x532d2f32cc87f57cu, 0x4eb138b67f412d28u,
    0xb3bc07946f8addd9u, 0x823b3547a1500820u, 0x6d673a5ed4c5f29fu,
    0xa8aef4e288aeaa71u, 0x3306b54524b78896u, 0x4b441e541579c8b2u,
    0xbdf74b28d3cc1001u, 0xcfd441612dc7bdbeu, 0x52ab1439927a06c5u,
    0x9679c1183b768f11u, 0x26ac0103c63f7d8fu, 0x892534d18966a04du,
    0xaf917e061e912817u, 0x0eba50e78c8298fbu, 0x142682b580b527e1u,
    0xfc1a4a1b1553602eu, 0x34e3a04ee04687b0u, 0x994fbb09e0cad9bfu,
    0x4255848f951314a0u, 0x71f8f65b95ef2d9eu, 0xd9aae3059f741fa3u,
    0x2275667807eae815u, 0x0024d6c54d0f098au, 0x376d06b990c9b41bu,
    0x6e3c4d78d310edccu, 0x88d35e9199301937u, 0x6445755382e50762u,
    0x99497fbd2b69a60fu, 0xab86e34c572170b3u, 0x0c9ec0f336db4b9fu,
    0x1bfbb241fac39e78u, 0xb4bd604e7823db70u, 0x1fd0b35aa6e80e6fu,
    0xa62bb58bf458cfc7u, 0xbc34697a81ac55dcu, 0x491c494093da2bddu,
    0x735d2488a2270314u, 0x1c404d8c17cc030au, 0x2a7adcb939a41c40u,
    0x2addbe22f454351du, 0xfc651ef871a66822u, 0x3c3f1bc75cd42b1eu,
    0x5b0ae60512a317b5u, 0xe893bc64170ad61eu, 0xc28ceb605740a66du,
    0xa4a4cf6d1f0ebd25u, 0xc6391a0e224bbebau, 0x45626c70f30a8611u,
    0x34a99c7914560ed8u, 0xff67abfcaf9e1201u, 0x1312ac863f7f6badu,
    0x52e5ad8128a3454fu, 0x7acc714ada5eea21u, 0x9defe870ba602054u,
    0xf3556c702c105e52u, 0xd903ba08e4c1da93u, 0x08cdc0e7f9627a01u,
    0xe12f86328262a150u, 0x92262b6651a5ee09u, 0x13a63eb6e97ce166u,
    0x98f72cebaa03bc5fu,
};

/* Hashes p[0..n) into h with no cut test. */
static inline uint64_t cdc_hash_run(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h << 1) + gear[p[i]];
    return h;
}

/* One chain: the index of the first byte of p[0..n) after which (h & mask) == 0, or n if none.
 * *hp is the hash before p[0] on entry and the hash after the returned byte (or after p[n-1]). */
static size_t cdc_scan1(const uint8_t *p, size_t n, uint64_t *hp, uint64_t mask) {
    uint64_t h = *hp;
    size_t i = 0;
#define CDC_STEP1(k)                                   \
    h = (h << 1) + gear[p[i + (k)]];                   \
    if (CDC_UNLIKELY((h & mask) == 0)) {               \
        i += (k);                                      \
        goto hit;                                      \
    }
    for (; n - i >= 8; i += 8) {
        CDC_STEP1(0) CDC_STEP1(1) CDC_STEP1(2) CDC_STEP1(3)
        CDC_STEP1(4) CDC_STEP1(5) CDC_STEP1(6) CDC_STEP1(7)
    }
    for (; i < n; i++) {
        CDC_STEP1(0)
    }
#undef CDC_STEP1
    *hp = h;
    return n;
hit:
    *hp = h;
    return i;
}

/* Like cdc_scan1, with CDC_CHAINS interleaved chains over rounds of CDC_CHAINS * block bytes.
 * Inlined into cdc_scan with a constant block, so the chains' offsets are constants too. */
CDC_INLINE size_t cdc_scan_chains(const uint8_t *p, size_t n, uint64_t *hp, uint64_t mask,
                                  const size_t block) {
    const size_t round = CDC_CHAINS * block;
    uint64_t h[CDC_CHAINS];
    size_t base = 0, j, c = 0;
    h[0] = *hp;
    for (; n - base >= round; base += round) {
        const uint8_t *q = p + base;
        for (c = 1; c < CDC_CHAINS; c++)
            h[c] = cdc_hash_run(0, q + c * block - (CDC_WINDOW - 1), CDC_WINDOW - 1);
#define CDC_STEPC(k)                                                                  \
        for (c = 0; c < CDC_CHAINS; c++) h[c] = (h[c] << 1) + gear[q[c * block + j + (k)]]; \
        for (c = 0; c < CDC_CHAINS; c++)                                              \
            if (CDC_UNLIKELY((h[c] & mask) == 0)) {                                  \
                j += (k);                                                             \
                goto hit;                                                             \
            }
        for (j = 0; j < block; j += 8) {
            CDC_STEPC(0) CDC_STEPC(1) CDC_STEPC(2) CDC_STEPC(3)
            CDC_STEPC(4) CDC_STEPC(5) CDC_STEPC(6) CDC_STEPC(7)
        }
#undef CDC_STEPC
        h[0] = h[CDC_CHAINS - 1];
    }
    {
        size_t r = cdc_scan1(p + base, n - base, &h[0], mask);
        *hp = h[0];
        return base + r;
    }
hit:
    /* Chain c hit after byte j of its block and no chain before it did up to there: only the
     * rest of their blocks can hold an earlier cut. */
    for (size_t e = 0; e < c; e++) {
        uint64_t he = h[e];
        size_t rest = block - j - 1;
        size_t r = cdc_scan1(p + base + e * block + j + 1, rest, &he, mask);
        if (r < rest) {
            *hp = he;
            return base + e * block + j + 1 + r;
        }
    }
    *hp = h[c];
    return base + c * block + j;
}

/* The first cut in p[0..n) under one mask, as cdc_scan1 (same result, faster). */
static size_t cdc_scan(const uint8_t *p, size_t n, uint64_t *hp, uint64_t mask) {
    if (n >= CDC_CHAINS * CDC_BLOCK_LONG) return cdc_scan_chains(p, n, hp, mask, CDC_BLOCK_LONG);
    return cdc_scan_chains(p, n, hp, mask, CDC_BLOCK_SHORT);
}

static uint64_t cdc_top_bits(int bits) {
    return bits <= 0 ? 0 : ~(uint64_t)0 << (64 - bits);
}

int cairn_cdc_init(cairn_cdc *state, uint64_t min_size, uint64_t avg_size, uint64_t max_size,
                   int normalization) {
    if (state == NULL) return CAIRN_E_ARG;
    if (min_size < CDC_WINDOW || min_size > avg_size || avg_size > max_size) return CAIRN_E_ARG;
    if (min_size >= max_size || max_size >= CDC_LIMIT) return CAIRN_E_ARG;
    if ((avg_size & (avg_size - 1)) != 0) return CAIRN_E_ARG;
    if (normalization < 0 || normalization > 3) return CAIRN_E_ARG;
    int bits = 0;
    while (((uint64_t)1 << bits) != avg_size) bits++;
    if (bits - normalization < 1) return CAIRN_E_ARG;
    state->min_size = min_size;
    state->avg_size = avg_size;
    state->max_size = max_size;
    state->mask_small = cdc_top_bits(bits + normalization);
    state->mask_large = cdc_top_bits(bits - normalization);
    state->hash = 0;
    state->length = 0;
    return 0;
}

static size_t cdc_min(uint64_t a, size_t b) {
    return a < (uint64_t)b ? (size_t)a : b;
}

int64_t cairn_cdc_scan(cairn_cdc *state, const uint8_t *buf, size_t len, uint64_t *lengths,
                       size_t max_cuts, size_t *consumed) {
    if (state == NULL || consumed == NULL || (buf == NULL && len > 0)) return CAIRN_E_ARG;
    if (lengths == NULL && max_cuts > 0) return CAIRN_E_ARG;
    const uint64_t min = state->min_size, avg = state->avg_size, max = state->max_size;
    if (min < CDC_WINDOW || min > avg || avg > max || min >= max) return CAIRN_E_ARG;
    uint64_t length = state->length, h = state->hash;
    size_t pos = 0, cuts = 0;
    while (pos < len) {
        const uint8_t *p = buf + pos;
        size_t n = len - pos, k;
        if (length < min - CDC_WINDOW) { /* skipped: no tested hash depends on these bytes */
            k = cdc_min(min - CDC_WINDOW - length, n);
            length += k;
            pos += k;
            continue;
        }
        if (length < min - 1) { /* the window before the first tested byte: hashed, not tested */
            k = cdc_min(min - 1 - length, n);
            h = cdc_hash_run(h, p, k);
            length += k;
            pos += k;
            continue;
        }
        uint64_t region, mask;
        if (length < avg - 1) {
            region = avg - 1 - length;
            mask = state->mask_small;
        } else if (length < max - 1) {
            region = max - 1 - length;
            mask = state->mask_large;
        } else {
            region = 1; /* the byte that makes the chunk max bytes long: mask 0 always cuts */
            mask = 0;
        }
        size_t limit = cdc_min(region, n);
        k = cdc_scan(p, limit, &h, mask);
        if (k == limit) {
            length += k;
            pos += k;
            continue;
        }
        if (cuts == max_cuts) {
            /* No room: stop just before the cut byte; the next call hashes it again. The shift
             * there drops h's top bit, so losing it here does not matter. */
            h = (h - gear[p[k]]) >> 1;
            length += k;
            pos += k;
            break;
        }
        lengths[cuts++] = length + k + 1;
        length = 0;
        h = 0;
        pos += k + 1;
    }
    state->length = length;
    state->hash = h;
    *consumed = pos;
    return (int64_t)cuts;
}
