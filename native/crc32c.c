/* CRC32C (Castagnoli, reflected polynomial P = 0x82F63B78) with four kernels.
 *
 * Representation: a 32-bit CRC state is "reflected": bit i holds the coefficient of x^(31-i).
 * The raw state after message M, starting from state s, is s*x^(8|M|) + M(x)*x^32 mod P, which
 * is linear in s and in M. The public function applies the standard ~ pre/post inversion.
 *
 * portable: slice-by-8 tables (8 KiB, built once by cairn_crc32c_build_tables).
 * sse42:    the crc32 instruction; long buffers run three independent streams of L bytes and
 *           join them with a "multiply by x^(8L) mod P" operator held in four byte tables.
 * pclmul:   folds 16-byte blocks with carry-less multiplies (four xmm accumulators, 64 bytes per
 *           iteration), see below; sse42 handles short inputs.
 * vpclmul:  the same folding over zmm registers (four lanes of 16 bytes each), 256 bytes per
 *           iteration, merging both products and the next data with one vpternlogq.
 *
 * Folding. A 16-byte block in an xmm register holds H (low qword, the first 8 bytes, higher
 * degree) and L (high qword); its value is H*x^64 + L. In the reflected domain a carry-less
 * multiply of two 64-bit operands returns their product times x, so moving a block D bytes
 * forward is clmul(H, rev64(x^(8D+63) mod P)) ^ clmul(L, rev64(x^(8D-1) mod P)), where rev64
 * puts the coefficient of x^d at bit 63-d (for a reduced 32-bit value r that is r << 32). The
 * result is only congruent mod P, which is all the CRC needs, so D = 0 works too (x^-1 mod P
 * exists because P has a constant term). Both kernels therefore end by moving every remaining
 * accumulator lane and every whole tail block straight to the last block with its own distance
 * constant, all multiplies independent, and XOR them into one 128-bit value R. Then
 * crc32(crc32(0, R.lo), R.hi) = R*x^32 mod P is the raw CRC state. The len % 16 bytes that do
 * not fill a block are processed first with the crc32 instruction, so the folded part always
 * ends at the end of the buffer; the state so far is XORed into the first four bytes of the
 * first block. The distance constants are computed here at init time.
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

/* ---- sse42: the crc32 instruction ---- */

/* Stream lengths for the three-stream loop, longest first, and for each the operator
 * "multiply by x^(8L) mod P" as four tables indexed by the bytes of a state. */
#define CRC_STREAMS 2
static const size_t crc_stream_len[CRC_STREAMS] = {2048, 256};
static uint32_t crc_shift[CRC_STREAMS][4][256];

#define CRC_SSE42 __attribute__((target("sse4.2")))

static uint64_t crc_ld(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

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
    const uint32_t(*t)[256] = crc_shift[k];
    return t[0][s & 0xff] ^ t[1][(s >> 8) & 0xff] ^ t[2][(s >> 16) & 0xff] ^ t[3][s >> 24];
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

/* ---- folding constants ---- */

/* Distances in 16-byte blocks reach CRC_FOLD_MAX; entry i of crc_fold holds the pair for
 * distance CRC_FOLD_MAX - i (descending, so one 64-byte load gives four consecutive lanes),
 * followed by three zero pairs that masked-out lanes may read. */
#define CRC_FOLD_MAX 31
static uint64_t crc_fold[2 * (CRC_FOLD_MAX + 4)] __attribute__((aligned(64)));

static const uint64_t *crc_fold_k(size_t distance) { return crc_fold + 2 * (CRC_FOLD_MAX - distance); }

#define CRC_PCLMUL __attribute__((target("sse4.2,pclmul")))

/* Raw CRC state of a 128-bit folded remainder: R*x^32 mod P. */
CRC_PCLMUL static uint32_t crc_reduce128(__m128i r) {
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(r));
    return (uint32_t)_mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(r, 1));
}

/* The first n % 16 bytes with the crc32 instruction. */
CRC_SSE42 static uint32_t crc_head(uint32_t s, const uint8_t *p, size_t t) {
    if (t & 8) {
        s = (uint32_t)_mm_crc32_u64(s, crc_ld(p));
        p += 8;
    }
    return crc_sse42_1(s, p, t & 7);
}

/* ---- pclmul: 128-bit folding ---- */

CRC_PCLMUL static __m128i crc_fold128(__m128i a, __m128i k, __m128i d) {
    __m128i lo = _mm_clmulepi64_si128(a, k, 0x00), hi = _mm_clmulepi64_si128(a, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), d);
}

CRC_PCLMUL static __m128i crc_k128(size_t distance) {
    return _mm_loadu_si128((const __m128i *)crc_fold_k(distance));
}

#define CRC_PCLMUL_MIN 64

CRC_PCLMUL static uint32_t crc_pclmul(uint32_t s, const uint8_t *p, size_t n) {
    if (n < CRC_PCLMUL_MIN) return crc_sse42_1(s, p, n);
    size_t t = n & 15;
    s = crc_head(s, p, t);
    p += t;
    n -= t;
    const __m128i *v = (const __m128i *)p;
    __m128i a0 = _mm_xor_si128(_mm_loadu_si128(v), _mm_cvtsi32_si128((int)s));
    __m128i a1 = _mm_loadu_si128(v + 1), a2 = _mm_loadu_si128(v + 2), a3 = _mm_loadu_si128(v + 3);
    __m128i k = crc_k128(4);
    for (v += 4, n -= 64; n >= 64; v += 4, n -= 64) {
        a0 = crc_fold128(a0, k, _mm_loadu_si128(v));
        a1 = crc_fold128(a1, k, _mm_loadu_si128(v + 1));
        a2 = crc_fold128(a2, k, _mm_loadu_si128(v + 2));
        a3 = crc_fold128(a3, k, _mm_loadu_si128(v + 3));
    }
    /* q < 4 whole blocks remain; move everything to the last block. */
    size_t q = n >> 4;
    __m128i r = _mm_setzero_si128();
    for (size_t i = 0; i < q; i++) r = crc_fold128(_mm_loadu_si128(v + i), crc_k128(q - 1 - i), r);
    __m128i r0 = crc_fold128(a0, crc_k128(q + 3), crc_fold128(a1, crc_k128(q + 2), r));
    __m128i r1 = crc_fold128(a2, crc_k128(q + 1), crc_fold128(a3, crc_k128(q), _mm_setzero_si128()));
    return crc_reduce128(_mm_xor_si128(r0, r1));
}

/* ---- vpclmul: 512-bit folding ---- */

#define CRC_VPCLMUL __attribute__((target("sse4.2,pclmul,avx512f,avx512bw,avx512vl,vpclmulqdq")))

CRC_VPCLMUL static __m512i crc_fold512(__m512i a, __m512i k, __m512i d) {
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00),
                                     _mm512_clmulepi64_epi128(a, k, 0x11), d, 0x96);
}

/* Constants for four lanes at distances distance, distance - 1, ..., distance - 3. */
CRC_VPCLMUL static __m512i crc_k512(size_t distance) {
    return _mm512_loadu_si512((const void *)crc_fold_k(distance));
}

#define CRC_VPCLMUL_MIN 256

CRC_VPCLMUL static uint32_t crc_vpclmul(uint32_t s, const uint8_t *p, size_t n) {
    if (n < CRC_VPCLMUL_MIN) return crc_sse42_1(s, p, n);
    size_t t = n & 15;
    s = crc_head(s, p, t);
    p += t;
    n -= t;
    const __m512i *v = (const __m512i *)p;
    __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(v), _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)s)));
    __m512i a1 = _mm512_loadu_si512(v + 1), a2 = _mm512_loadu_si512(v + 2), a3 = _mm512_loadu_si512(v + 3);
    __m512i k = _mm512_broadcast_i32x4(crc_k128(16));
    for (v += 4, n -= 256; n >= 256; v += 4, n -= 256) {
        a0 = crc_fold512(a0, k, _mm512_loadu_si512(v));
        a1 = crc_fold512(a1, k, _mm512_loadu_si512(v + 1));
        a2 = crc_fold512(a2, k, _mm512_loadu_si512(v + 2));
        a3 = crc_fold512(a3, k, _mm512_loadu_si512(v + 3));
    }
    /* q < 16 whole blocks remain, loaded four per zmm (the last one masked); every lane moves
     * straight to the last block. */
    size_t q = n >> 4;
    __m512i r = _mm512_setzero_si512();
    for (size_t g = 0; 4 * g < q; g++) {
        size_t bytes = 16 * q - 64 * g;
        __mmask64 m = bytes >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << bytes) - 1;
        r = crc_fold512(_mm512_maskz_loadu_epi8(m, v + g), crc_k512(q - 1 - 4 * g), r);
    }
    __m512i r0 = crc_fold512(a0, crc_k512(q + 15), crc_fold512(a1, crc_k512(q + 11), r));
    __m512i r1 = crc_fold512(a2, crc_k512(q + 7), crc_fold512(a3, crc_k512(q + 3), _mm512_setzero_si512()));
    r = _mm512_xor_si512(r0, r1);
    __m256i y = _mm256_xor_si256(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64(r, 1));
    return crc_reduce128(_mm_xor_si128(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1)));
}

static void crc_build_simd_tables(void) {
    /* Walk x^e mod P from e = -1 upwards, keeping K_L(m) = x^(128m-1), K_H(m) = x^(128m+63). */
    uint32_t v = CRC_X_INV;
    for (long e = -1; e <= 128L * CRC_FOLD_MAX + 63; e++, v = crc_mul_x(v)) {
        if ((e + 1) % 128 == 0) crc_fold[2 * (CRC_FOLD_MAX - (e + 1) / 128) + 1] = (uint64_t)v << 32;
        if (e >= 63 && (e - 63) % 128 == 0) crc_fold[2 * (CRC_FOLD_MAX - (e - 63) / 128)] = (uint64_t)v << 32;
    }
    for (int k = 0; k < CRC_STREAMS; k++) {
        /* img[i] = (bit i of a state, i.e. x^(31-i)) * x^(8L) mod P. */
        uint32_t img[32];
        v = 0x80000000u; /* x^0 */
        for (size_t e = 0; e < 8 * crc_stream_len[k]; e++) v = crc_mul_x(v);
        for (int i = 31; i >= 0; i--, v = crc_mul_x(v)) img[i] = v;
        for (int b = 0; b < 4; b++)
            for (int x = 0; x < 256; x++) {
                uint32_t r = 0;
                for (int j = 0; j < 8; j++)
                    if (x >> j & 1) r ^= img[8 * b + j];
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
