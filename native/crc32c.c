/* CRC32C (Castagnoli, reflected polynomial P = 0x82F63B78) with four kernels.
 *
 * Representation: a 32-bit CRC state is "reflected": bit i holds the coefficient of x^(31-i).
 * The raw state after message M, starting from state s, is s*x^(8|M|) + M(x)*x^32 mod P: linear
 * in s and in M, so a state s "at" some position is the same as s XORed into the next four
 * message bytes. The public function applies the standard ~ pre/post inversion.
 *
 * portable: slice-by-8 tables (8 KiB, built once by cairn_crc32c_build_tables).
 * sse42:    the crc32 instruction; long buffers run three independent streams of L bytes and
 *           join them with a "multiply by x^(8L) mod P" operator held in four byte tables.
 * pclmul:   folds 16-byte blocks with carry-less multiplies, four xmm accumulators (64 bytes
 *           per chunk), see below.
 * vpclmul:  the same over four zmm accumulators (256 bytes per chunk), merging both products
 *           and the next data with one vpternlogq.
 *
 * Folding. A 16-byte block in an xmm register holds H (low qword, the first 8 bytes, higher
 * degree) and L (high qword); its value is H*x^64 + L. In the reflected domain a carry-less
 * multiply of two 64-bit operands returns their product times x, so moving a block D bytes
 * forward is clmul(H, rev64(x^(8D+63) mod P)) ^ clmul(L, rev64(x^(8D-1) mod P)), where rev64
 * puts the coefficient of x^d at bit 63-d (for a reduced 32-bit value r that is r << 32). The
 * result is only congruent mod P, which is all the CRC needs, so D = 0 works too (x^-1 mod P
 * exists because P has a constant term). After the main loop every accumulator lane and every
 * remaining whole block moves straight to the last block with its own distance constant (all
 * multiplies independent) and the products are XORed into one 128-bit R; then
 * crc32(crc32(0, R.lo), R.hi) = R*x^32 mod P is the raw CRC state. The first len % 16 bytes go
 * through the crc32 instruction first, so the folded part always ends at the end of the buffer.
 *
 * Superblocks. The carry-less multiplier and the crc32 unit work in parallel, so both folding
 * kernels interleave them: a superblock is k chunks, folded, followed by three streams of CRC_W
 * bytes per chunk that the crc32 instruction runs (from state 0) in the same loop. The three
 * stream states, moved to the end of the superblock with one multiply each (a state is a block
 * with L = 0), are XORed into the first chunk after it, and the accumulators jump over the
 * streams with a gap constant. All constants are computed once at init.
 */
#include <string.h>

#include "internal.h"

#if CAIRN_X86 && defined(__x86_64__) && defined(__GNUC__)
#define CRC_SIMD 1
#include <immintrin.h>
#else
#define CRC_SIMD 0
#endif

#define CRC_POLY 0x82F63B78u
#define CRC_X_INV 0x05EC76F1u /* x^-1 mod P: (P + 1) / x in the reflected representation */

static uint32_t crc_slice[8][256];

/* Multiplies a reflected residue by x. */
static uint32_t crc_mul_x(uint32_t v) { return (v >> 1) ^ ((v & 1) ? CRC_POLY : 0); }

static uint64_t crc_load64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static uint32_t crc_portable(uint32_t s, const uint8_t *p, size_t n) {
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w = crc_load64(p) ^ s;
        s = crc_slice[7][w & 0xff] ^ crc_slice[6][(w >> 8) & 0xff] ^
            crc_slice[5][(w >> 16) & 0xff] ^ crc_slice[4][(w >> 24) & 0xff] ^
            crc_slice[3][(w >> 32) & 0xff] ^ crc_slice[2][(w >> 40) & 0xff] ^
            crc_slice[1][(w >> 48) & 0xff] ^ crc_slice[0][w >> 56];
    }
    for (; n; p++, n--) s = (s >> 8) ^ crc_slice[0][(s ^ *p) & 0xff];
    return s;
}

#if CRC_SIMD

/* Product of two reflected residues mod P (Horner over the coefficients of a, highest first). */
static uint32_t crc_mulmod(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    for (int i = 0; i < 32; i++) r = crc_mul_x(r) ^ ((a >> i & 1) ? b : 0);
    return r;
}

/* x^e mod P for e >= -1, by square and multiply. */
static uint32_t crc_xpow(long e) {
    if (e < 0) return CRC_X_INV;
    uint32_t r = 0x80000000u, base = 0x40000000u; /* x^0, x^1 */
    for (; e; e >>= 1, base = crc_mulmod(base, base))
        if (e & 1) r = crc_mulmod(r, base);
    return r;
}

#define CRC_SSE42 __attribute__((target("sse4.2")))
#define CRC_PCLMUL __attribute__((target("sse4.2,pclmul")))
#define CRC_VPCLMUL __attribute__((target("sse4.2,pclmul,avx512f,avx512bw,avx512vl,vpclmulqdq")))

static uint64_t crc_ld(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* ---- sse42: the crc32 instruction ---- */

/* Stream lengths for the three-stream loop, longest first, and for each the operator
 * "multiply by x^(8L) mod P" as four tables indexed by the bytes of a state. */
#define CRC_STREAMS 2
static const size_t crc_stream_len[CRC_STREAMS] = {2048, 256};
static uint32_t crc_shift[CRC_STREAMS][4][256];

CRC_SSE42 static uint32_t crc_sse42_1(uint32_t s, const uint8_t *p, size_t n) {
    uint64_t c = s;
    for (; n >= 8; p += 8, n -= 8) c = _mm_crc32_u64(c, crc_ld(p));
    s = (uint32_t)c;
    if (n & 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        s = _mm_crc32_u32(s, w);
        p += 4;
    }
    if (n & 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        s = _mm_crc32_u16(s, w);
        p += 2;
    }
    if (n & 1) s = _mm_crc32_u8(s, *p);
    return s;
}

static uint32_t crc_shift_apply(int k, uint32_t s) {
    return crc_shift[k][0][s & 0xff] ^ crc_shift[k][1][(s >> 8) & 0xff] ^
           crc_shift[k][2][(s >> 16) & 0xff] ^ crc_shift[k][3][s >> 24];
}

CRC_SSE42 static uint32_t crc_sse42(uint32_t s, const uint8_t *p, size_t n) {
    for (int k = 0; k < CRC_STREAMS; k++) {
        size_t len = crc_stream_len[k];
        for (; n >= 3 * len; p += 3 * len, n -= 3 * len) {
            uint64_t c0 = s, c1 = 0, c2 = 0;
            for (size_t i = 0; i < len; i += 8) {
                c0 = _mm_crc32_u64(c0, crc_ld(p + i));
                c1 = _mm_crc32_u64(c1, crc_ld(p + len + i));
                c2 = _mm_crc32_u64(c2, crc_ld(p + 2 * len + i));
            }
            s = crc_shift_apply(k, (uint32_t)c0) ^ (uint32_t)c1;
            s = crc_shift_apply(k, s) ^ (uint32_t)c2;
        }
    }
    return crc_sse42_1(s, p, n);
}

/* The first n % 16 bytes with the crc32 instruction. */
CRC_SSE42 static uint32_t crc_head(uint32_t s, const uint8_t *p, size_t t) {
    if (t & 8) {
        s = (uint32_t)_mm_crc32_u64(s, crc_ld(p));
        p += 8;
    }
    return crc_sse42_1(s, p, t & 7);
}

/* ---- folding constants and helpers ---- */

/* Distances in 16-byte blocks reach CRC_FOLD_MAX; entry i of crc_fold holds the pair for
 * distance CRC_FOLD_MAX - i (descending, so one 64-byte load gives four consecutive lanes),
 * followed by three zero pairs that masked-out (all zero) lanes may read. */
#define CRC_FOLD_MAX 30
static uint64_t crc_fold[CRC_FOLD_MAX + 4][2] __attribute__((aligned(64)));

/* Superblocks: CRC_W stream bytes per chunk, at most CRC_KMAX chunks. crc_join[k] holds K_H for
 * moving the states of streams 0 and 1 to the end of stream 2 (2Wk and Wk bytes); crc_gap*[k]
 * the fold pair that jumps from a superblock's last chunk to the next chunk (chunk + 3Wk). */
#define CRC_W 32
#define CRC_KMAX 64
static uint64_t crc_join[CRC_KMAX + 1][2] __attribute__((aligned(16)));
static uint64_t crc_gap128[CRC_KMAX + 1][2] __attribute__((aligned(16)));
static uint64_t crc_gap512[CRC_KMAX + 1][2] __attribute__((aligned(16)));

static const uint64_t *crc_fold_k(size_t distance) { return crc_fold[CRC_FOLD_MAX - distance]; }

CRC_PCLMUL static __m128i crc_k128(size_t distance) {
    return _mm_load_si128((const __m128i *)crc_fold_k(distance));
}

CRC_PCLMUL static __m128i crc_fold128(__m128i a, __m128i k, __m128i d) {
    __m128i lo = _mm_clmulepi64_si128(a, k, 0x00), hi = _mm_clmulepi64_si128(a, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), d);
}

/* Raw CRC state of a 128-bit folded remainder: R*x^32 mod P. */
CRC_PCLMUL static uint32_t crc_reduce128(__m128i r) {
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(r));
    return (uint32_t)_mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(r, 1));
}

/* Three crc32 streams. */
typedef struct {
    uint64_t x0, x1, x2;
} crc_three;

/* CRC_W bytes of each of the three streams at c, c + w and c + 2w. */
CRC_SSE42 static inline crc_three crc_streams(crc_three x, const uint8_t *c, size_t w) {
    for (int b = 0; b < CRC_W; b += 8) {
        x.x0 = _mm_crc32_u64(x.x0, crc_ld(c + b));
        x.x1 = _mm_crc32_u64(x.x1, crc_ld(c + w + b));
        x.x2 = _mm_crc32_u64(x.x2, crc_ld(c + 2 * w + b));
    }
    return x;
}

/* The three stream states of a k-chunk superblock as one block just after it. */
CRC_PCLMUL static __m128i crc_join3(crc_three x, size_t k) {
    __m128i kj = _mm_load_si128((const __m128i *)crc_join[k]);
    __m128i j0 = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)x.x0), kj, 0x00);
    __m128i j1 = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)x.x1), kj, 0x10);
    return _mm_xor_si128(_mm_xor_si128(j0, j1), _mm_cvtsi64_si128((long long)x.x2));
}

/* Chunks per superblock when n bytes remain, each chunk followed by 3W stream bytes; 0 when
 * there is no room for one superblock plus the whole chunk that must follow it. */
static size_t crc_super_chunks(size_t n, size_t chunk) {
    size_t k = n >= 2 * chunk + 3 * CRC_W ? (n - chunk) / (chunk + 3 * CRC_W) : 0;
    return k > CRC_KMAX ? CRC_KMAX : k;
}

/* ---- pclmul: 128-bit folding ---- */

typedef struct {
    __m128i a0, a1, a2, a3;
} crc_acc128;

/* Folds the four accumulators forward with constant k onto the 64 bytes at p (x XORed in). */
CRC_PCLMUL static inline crc_acc128 crc_chunk64(crc_acc128 a, __m128i k, const uint8_t *p, __m128i x) {
    const __m128i *v = (const __m128i *)p;
    a.a0 = crc_fold128(a.a0, k, _mm_xor_si128(_mm_loadu_si128(v), x));
    a.a1 = crc_fold128(a.a1, k, _mm_loadu_si128(v + 1));
    a.a2 = crc_fold128(a.a2, k, _mm_loadu_si128(v + 2));
    a.a3 = crc_fold128(a.a3, k, _mm_loadu_si128(v + 3));
    return a;
}

#define CRC_PCLMUL_MIN 64

CRC_PCLMUL static uint32_t crc_pclmul(uint32_t s, const uint8_t *p, size_t n) {
    if (n < CRC_PCLMUL_MIN) return crc_sse42_1(s, p, n);
    size_t t = n & 15;
    s = crc_head(s, p, t);
    p += t;
    n -= t;
    const __m128i zero = _mm_setzero_si128(), k64 = crc_k128(4);
    __m128i j = zero, kg = k64; /* j goes into the block at p; kg moves a to p */
    const __m128i *v = (const __m128i *)p;
    crc_acc128 a = {_mm_loadu_si128(v), _mm_loadu_si128(v + 1), _mm_loadu_si128(v + 2),
                    _mm_loadu_si128(v + 3)};
    a.a0 = _mm_xor_si128(a.a0, _mm_cvtsi32_si128((int)s));
    p += 64;
    n -= 64;
    for (size_t k; (k = crc_super_chunks(n, 64)) != 0; n -= k * (64 + 3 * CRC_W)) {
        const uint8_t *c = p + 64 * k, *end = c;
        crc_three x = {0, 0, 0};
        x = crc_streams(x, c, CRC_W * k);
        a = crc_chunk64(a, kg, p, j);
        for (p += 64, c += CRC_W; p < end; p += 64, c += CRC_W) {
            x = crc_streams(x, c, CRC_W * k);
            a = crc_chunk64(a, k64, p, zero);
        }
        j = crc_join3(x, k);
        kg = _mm_load_si128((const __m128i *)crc_gap128[k]);
        p += 3 * CRC_W * k;
    }
    if (n >= 64) {
        a = crc_chunk64(a, kg, p, j);
        for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) a = crc_chunk64(a, k64, p, zero);
        j = zero;
    } /* else no superblock ran: j and kg are as they started */
    /* q < 4 whole blocks remain; every lane moves straight to the last block. */
    size_t q = n >> 4;
    __m128i r = zero;
    for (size_t i = 0; i < q; i++) {
        __m128i d = _mm_loadu_si128((const __m128i *)p + i);
        r = crc_fold128(i == 0 ? _mm_xor_si128(d, j) : d, crc_k128(q - 1 - i), r);
    }
    __m128i r0 = crc_fold128(a.a0, crc_k128(q + 3), crc_fold128(a.a1, crc_k128(q + 2), r));
    __m128i r1 = crc_fold128(a.a2, crc_k128(q + 1), crc_fold128(a.a3, crc_k128(q), zero));
    return crc_reduce128(_mm_xor_si128(r0, r1));
}

/* ---- vpclmul: 512-bit folding ---- */

CRC_VPCLMUL static __m512i crc_fold512(__m512i a, __m512i k, __m512i d) {
    __m512i hi = _mm512_clmulepi64_epi128(a, k, 0x11);
    a = _mm512_clmulepi64_epi128(a, k, 0x00);
    return _mm512_ternarylogic_epi64(a, hi, d, 0x96);
}

/* Constants for four lanes at distances distance, distance - 1, ..., distance - 3. */
CRC_VPCLMUL static __m512i crc_k512(size_t distance) {
    return _mm512_loadu_si512((const void *)crc_fold_k(distance));
}

typedef struct {
    __m512i a0, a1, a2, a3;
} crc_acc512;

/* Folds the four accumulators forward with constant k onto the 256 bytes at p (x XORed in). */
CRC_VPCLMUL static inline crc_acc512 crc_chunk256(crc_acc512 a, __m512i k, const uint8_t *p, __m512i x) {
    a.a0 = crc_fold512(a.a0, k, _mm512_xor_si512(_mm512_loadu_si512(p), x));
    a.a1 = crc_fold512(a.a1, k, _mm512_loadu_si512(p + 64));
    a.a2 = crc_fold512(a.a2, k, _mm512_loadu_si512(p + 128));
    a.a3 = crc_fold512(a.a3, k, _mm512_loadu_si512(p + 192));
    return a;
}

#define CRC_VPCLMUL_MIN 96 /* below this one crc32 stream is faster */

/* The 16 lanes of the accumulators moved to the last of the q blocks that follow them. */
CRC_VPCLMUL static __m512i crc_finish512(crc_acc512 a, size_t q) {
    __m512i r = crc_fold512(a.a1, crc_k512(q + 11), _mm512_setzero_si512());
    r = crc_fold512(a.a0, crc_k512(q + 15), r);
    return crc_fold512(a.a2, crc_k512(q + 7), crc_fold512(a.a3, crc_k512(q + 3), r));
}

CRC_VPCLMUL static uint32_t crc_vpclmul(uint32_t s, const uint8_t *p, size_t n) {
    if (n < CRC_VPCLMUL_MIN) return crc_sse42_1(s, p, n);
    size_t t = n & 15;
    s = crc_head(s, p, t);
    p += t;
    n -= t;
    const __m512i zero = _mm512_setzero_si512();
    /* j goes into the block at p: the state so far, to start. */
    __m512i j = _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)s)), r = zero;
    if (n >= 256) {
        const __m512i k256 = _mm512_broadcast_i32x4(crc_k128(16));
        __m512i kg = k256; /* moves the accumulators to the chunk at p */
        crc_acc512 a = {_mm512_xor_si512(_mm512_loadu_si512(p), j), _mm512_loadu_si512(p + 64),
                        _mm512_loadu_si512(p + 128), _mm512_loadu_si512(p + 192)};
        j = zero;
        p += 256;
        n -= 256;
        for (size_t k; (k = crc_super_chunks(n, 256)) != 0; n -= k * (256 + 3 * CRC_W)) {
            const uint8_t *c = p + 256 * k, *end = c;
            crc_three x = {0, 0, 0};
            x = crc_streams(x, c, CRC_W * k);
            a = crc_chunk256(a, kg, p, j);
            for (p += 256, c += CRC_W; p < end; p += 256, c += CRC_W) {
                x = crc_streams(x, c, CRC_W * k);
                a = crc_chunk256(a, k256, p, zero);
            }
            j = _mm512_zextsi128_si512(crc_join3(x, k));
            kg = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)crc_gap512[k]));
            p += 3 * CRC_W * k;
        }
        if (n >= 256) {
            a = crc_chunk256(a, kg, p, j);
            for (p += 256, n -= 256; n >= 256; p += 256, n -= 256) a = crc_chunk256(a, k256, p, zero);
            j = zero;
        } /* else no superblock ran: j and kg are as they started */
        r = crc_finish512(a, n >> 4);
    }
    /* q < 16 whole blocks remain, loaded four per zmm (the last one masked); every lane moves
     * straight to the last block. */
    size_t q = n >> 4;
    for (size_t g = 0; 4 * g < q; g++) {
        size_t bytes = 16 * q - 64 * g;
        __mmask64 m = bytes >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << bytes) - 1;
        __m512i d = _mm512_maskz_loadu_epi8(m, p + 64 * g);
        r = crc_fold512(g == 0 ? _mm512_xor_si512(d, j) : d, crc_k512(q - 1 - 4 * g), r);
    }
    __m256i y = _mm256_xor_si256(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64(r, 1));
    return crc_reduce128(_mm_xor_si128(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1)));
}

/* The fold pair for moving a block forward by d bytes: rev64 of x^(8d+63) and x^(8d-1) mod P. */
static void crc_fold_pair(uint64_t out[2], long d) {
    out[0] = (uint64_t)crc_xpow(8 * d + 63) << 32;
    out[1] = (uint64_t)crc_xpow(8 * d - 1) << 32;
}

static void crc_build_simd_tables(void) {
    for (int m = 0; m <= CRC_FOLD_MAX; m++) crc_fold_pair(crc_fold[CRC_FOLD_MAX - m], 16L * m);
    for (int k = 1; k <= CRC_KMAX; k++) {
        uint64_t pair[2];
        crc_fold_pair(pair, 2L * CRC_W * k);
        crc_join[k][0] = pair[0];
        crc_fold_pair(pair, 1L * CRC_W * k);
        crc_join[k][1] = pair[0];
        crc_fold_pair(crc_gap128[k], 64L + 3L * CRC_W * k);
        crc_fold_pair(crc_gap512[k], 256L + 3L * CRC_W * k);
    }
    for (int k = 0; k < CRC_STREAMS; k++) {
        uint32_t img[32]; /* bit i of a state is x^(31-i); img[i] = x^(31-i) * x^(8L) mod P */
        for (int i = 0; i < 32; i++) img[i] = crc_xpow(8L * (long)crc_stream_len[k] + 31 - i);
        for (int b = 0; b < 4; b++)
            for (int x = 0; x < 256; x++) {
                uint32_t r = 0;
                for (int i = 0; i < 8; i++)
                    if (x >> i & 1) r ^= img[8 * b + i];
                crc_shift[k][b][x] = r;
            }
    }
}

#endif /* CRC_SIMD */

void cairn_crc32c_build_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = crc_mul_x(c);
        crc_slice[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            crc_slice[k][i] = (crc_slice[k - 1][i] >> 8) ^ crc_slice[0][crc_slice[k - 1][i] & 0xff];
#if CRC_SIMD
    crc_build_simd_tables();
#endif
}

int cairn_crc_kernel_supported(int kernel) {
    switch (kernel) {
    case CAIRN_CRC_PORTABLE:
        return 1;
#if CRC_SIMD
    case CAIRN_CRC_SSE42:
        return cairn_cpu.sse42;
    case CAIRN_CRC_PCLMUL:
        return cairn_cpu.sse42 && cairn_cpu.pclmul;
    case CAIRN_CRC_VPCLMUL:
        return cairn_cpu.sse42 && cairn_cpu.pclmul && cairn_cpu.vpclmul && cairn_cpu.avx512bw &&
               cairn_cpu.avx512vl;
#endif
    default:
        return 0;
    }
}

int cairn_crc_kernel_best(void) {
    for (int kernel = CAIRN_CRC_KERNELS - 1; kernel > CAIRN_CRC_PORTABLE; kernel--)
        if (cairn_crc_kernel_supported(kernel)) return kernel;
    return CAIRN_CRC_PORTABLE;
}

const char *cairn_crc_kernel_name(int kernel) {
    static const char *const names[CAIRN_CRC_KERNELS] = {"portable", "sse42", "pclmul", "vpclmul"};
    return kernel >= 0 && kernel < CAIRN_CRC_KERNELS ? names[kernel] : "unknown";
}

uint32_t cairn_crc32c(int kernel, uint32_t crc, const uint8_t *buf, size_t len) {
    uint32_t s = ~crc;
    if (!cairn_crc_kernel_supported(kernel)) kernel = CAIRN_CRC_PORTABLE;
    switch (kernel) {
#if CRC_SIMD
    case CAIRN_CRC_SSE42:
        s = crc_sse42(s, buf, len);
        break;
    case CAIRN_CRC_PCLMUL:
        s = crc_pclmul(s, buf, len);
        break;
    case CAIRN_CRC_VPCLMUL:
        s = crc_vpclmul(s, buf, len);
        break;
#endif
    default:
        s = crc_portable(s, buf, len);
        break;
    }
    return ~s;
}

uint32_t cairn_crc32c_chars(int kernel, uint32_t crc, const char *buf, size_t len) {
    return cairn_crc32c(kernel, crc, (const uint8_t *)buf, len);
}
