/* Matrix multiplication over GF(2^8) on byte streams: the one kernel behind encode and decode.
 *
 * out[j] = XOR over i of coefficient(j, i) * in[i], for every byte position. Encoding uses the
 * parity rows of the generator; decoding uses rows built from an inverted submatrix; both come
 * here. Outputs are computed in groups small enough for their accumulators to live in vector
 * registers, so every input byte is loaded once per group: with up to 16 outputs (GFNI-AVX512)
 * or 8 (the others) per group, encoding reads the data once.
 *
 * Each SIMD kernel is compiled for its own target with function attributes and chosen at run
 * time, so the library runs on any CPU; the portable kernel is the reference the tests compare
 * every other kernel against, on every length (the vector kernels hand their tails to it, except
 * GFNI-AVX512 which masks its last vector).
 */
#include "internal.h"

#include <string.h>

#if CAIRN_X86
#include <immintrin.h>
#endif

#define GROUP_MAX 16
#define TABLE(tables, nin, j, i) ((tables) + ((size_t)(j) * (size_t)(nin) + (size_t)(i)) * CAIRN_GF_TABLE_BYTES)


/* ---- portable: nibble tables, byte at a time, blocked so a block of every stream stays in L1 */

static void portable_range(int nin, int nout, const uint8_t *tables, const uint8_t *const *in,
                           uint8_t *const *out, size_t start, size_t end) {
    enum { BLOCK = 4096 };
    for (size_t base = start; base < end; base += BLOCK) {
        size_t stop = end - base < BLOCK ? end : base + BLOCK;
        for (int j = 0; j < nout; j++) {
            uint8_t *o = out[j];
            for (int i = 0; i < nin; i++) {
                const uint8_t *t = TABLE(tables, nin, j, i), *x = in[i];
                if (i == 0) {
                    for (size_t b = base; b < stop; b++) o[b] = t[x[b] & 15] ^ t[16 + (x[b] >> 4)];
                } else {
                    for (size_t b = base; b < stop; b++) o[b] ^= t[x[b] & 15] ^ t[16 + (x[b] >> 4)];
                }
            }
        }
    }
}

static void portable_group(int nin, int nout, const uint8_t *tables, const uint8_t *const *in,
                           uint8_t *const *out, size_t len) {
    portable_range(nin, nout, tables, in, out, 0, len);
}

#if CAIRN_X86

/* Expands one kernel body, written for a compile-time output count N, into a function per
 * N = 1..MAX, and a dispatcher that picks by nout. With N constant the accumulator array is
 * fully unrolled into registers. */
#define SPECIALIZE_1_TO_8(prefix, attrs)                                                          \
    static attrs void prefix##_1(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(1, a, t, in, o, l); } \
    static attrs void prefix##_2(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(2, a, t, in, o, l); } \
    static attrs void prefix##_3(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(3, a, t, in, o, l); } \
    static attrs void prefix##_4(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(4, a, t, in, o, l); } \
    static attrs void prefix##_5(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(5, a, t, in, o, l); } \
    static attrs void prefix##_6(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(6, a, t, in, o, l); } \
    static attrs void prefix##_7(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(7, a, t, in, o, l); } \
    static attrs void prefix##_8(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(8, a, t, in, o, l); }

#define SPECIALIZE_9_TO_16(prefix, attrs)                                                         \
    static attrs void prefix##_9(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(9, a, t, in, o, l); } \
    static attrs void prefix##_10(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(10, a, t, in, o, l); } \
    static attrs void prefix##_11(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(11, a, t, in, o, l); } \
    static attrs void prefix##_12(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(12, a, t, in, o, l); } \
    static attrs void prefix##_13(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(13, a, t, in, o, l); } \
    static attrs void prefix##_14(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(14, a, t, in, o, l); } \
    static attrs void prefix##_15(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(15, a, t, in, o, l); } \
    static attrs void prefix##_16(int a, const uint8_t *t, const uint8_t *const *in, uint8_t *const *o, size_t l) { prefix##_body(16, a, t, in, o, l); }

typedef void (*fixed_kernel)(int nin, const uint8_t *tables, const uint8_t *const *in, uint8_t *const *out, size_t len);

#define TARGET_SSSE3 __attribute__((target("ssse3")))
#define TARGET_AVX2 __attribute__((target("avx2")))
#define TARGET_GFNI_AVX2 __attribute__((target("avx2,gfni")))
#define TARGET_GFNI_AVX512 __attribute__((target("avx512f,avx512bw,gfni")))
#define INLINE static inline __attribute__((always_inline))

/* ---- SSSE3 and AVX2: pshufb looks up the products of the low and the high nibbles ---- */

INLINE TARGET_SSSE3 __m128i ssse3_product(const uint8_t *t, __m128i x) {
    const __m128i low_mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(x, low_mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi64(x, 4), low_mask);
    return _mm_xor_si128(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)t), lo),
                         _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(t + 16)), hi));
}

INLINE TARGET_SSSE3 void ssse3_body(const int N, int nin, const uint8_t *tables,
                                    const uint8_t *const *in, uint8_t *const *out, size_t len) {
    size_t vec_end = len & ~(size_t)15;
    for (size_t off = 0; off < vec_end; off += 16) {
        __m128i acc[GROUP_MAX];
        __m128i x = _mm_loadu_si128((const __m128i *)(in[0] + off));
        for (int j = 0; j < N; j++) acc[j] = ssse3_product(TABLE(tables, nin, j, 0), x);
        for (int i = 1; i < nin; i++) {
            x = _mm_loadu_si128((const __m128i *)(in[i] + off));
            for (int j = 0; j < N; j++) acc[j] = _mm_xor_si128(acc[j], ssse3_product(TABLE(tables, nin, j, i), x));
        }
        for (int j = 0; j < N; j++) _mm_storeu_si128((__m128i *)(out[j] + off), acc[j]);
    }
    portable_range(nin, N, tables, in, out, vec_end, len);
}

/* The 16-byte tables are broadcast to both lanes: vpshufb looks up within each 128-bit lane. */
INLINE TARGET_AVX2 __m256i avx2_product(const uint8_t *t, __m256i x) {
    const __m256i low_mask = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(x, low_mask);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), low_mask);
    __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
    __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16)));
    return _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, hi));
}

INLINE TARGET_AVX2 void avx2_body(const int N, int nin, const uint8_t *tables,
                                  const uint8_t *const *in, uint8_t *const *out, size_t len) {
    size_t vec_end = len & ~(size_t)31;
    for (size_t off = 0; off < vec_end; off += 32) {
        __m256i acc[GROUP_MAX];
        __m256i x = _mm256_loadu_si256((const __m256i *)(in[0] + off));
        for (int j = 0; j < N; j++) acc[j] = avx2_product(TABLE(tables, nin, j, 0), x);
        for (int i = 1; i < nin; i++) {
            x = _mm256_loadu_si256((const __m256i *)(in[i] + off));
            for (int j = 0; j < N; j++) acc[j] = _mm256_xor_si256(acc[j], avx2_product(TABLE(tables, nin, j, i), x));
        }
        for (int j = 0; j < N; j++) _mm256_storeu_si256((__m256i *)(out[j] + off), acc[j]);
    }
    portable_range(nin, N, tables, in, out, vec_end, len);
}

/* ---- GFNI: one affine instruction multiplies 32 or 64 bytes by a constant ---- */

static inline uint64_t affine_of(const uint8_t *tables, int nin, int j, int i) {
    uint64_t matrix;
    memcpy(&matrix, TABLE(tables, nin, j, i) + 32, sizeof matrix);
    return matrix;
}

INLINE TARGET_GFNI_AVX2 __m256i gfni_avx2_product(const uint8_t *tables, int nin, int j, int i, __m256i x) {
    return _mm256_gf2p8affine_epi64_epi8(x, _mm256_set1_epi64x((long long)affine_of(tables, nin, j, i)), 0);
}

INLINE TARGET_GFNI_AVX2 void gfni_avx2_body(const int N, int nin, const uint8_t *tables,
                                            const uint8_t *const *in, uint8_t *const *out, size_t len) {
    size_t vec_end = len & ~(size_t)31;
    for (size_t off = 0; off < vec_end; off += 32) {
        __m256i acc[GROUP_MAX];
        __m256i x = _mm256_loadu_si256((const __m256i *)(in[0] + off));
        for (int j = 0; j < N; j++) acc[j] = gfni_avx2_product(tables, nin, j, 0, x);
        for (int i = 1; i < nin; i++) {
            x = _mm256_loadu_si256((const __m256i *)(in[i] + off));
            for (int j = 0; j < N; j++) acc[j] = _mm256_xor_si256(acc[j], gfni_avx2_product(tables, nin, j, i, x));
        }
        for (int j = 0; j < N; j++) _mm256_storeu_si256((__m256i *)(out[j] + off), acc[j]);
    }
    portable_range(nin, N, tables, in, out, vec_end, len);
}

/* C columns of 64 bytes at once (C = 4 or 2 for small groups, so the matrices and pointers loaded
 * for an input serve twice as many bytes), inputs two at a time so that one ternary-logic XOR
 * merges both products into the accumulator. `mask` covers the valid bytes of each column (all
 * 64 except in the last one). */
INLINE TARGET_GFNI_AVX512 void gfni_avx512_columns(const int N, const int C, int nin, const uint8_t *tables,
                                                   const uint8_t *const *in, uint8_t *const *out,
                                                   size_t off, __mmask64 mask) {
    __m512i acc[GROUP_MAX][4];
    int i = 0;
    if (nin & 1) {
        __m512i x[4];
        for (int c = 0; c < C; c++) x[c] = _mm512_maskz_loadu_epi8(mask, in[0] + off + 64 * c);
        for (int j = 0; j < N; j++) {
            __m512i a = _mm512_set1_epi64((long long)affine_of(tables, nin, j, 0));
            for (int c = 0; c < C; c++) acc[j][c] = _mm512_gf2p8affine_epi64_epi8(x[c], a, 0);
        }
        i = 1;
    } else {
        for (int j = 0; j < N; j++) {
            for (int c = 0; c < C; c++) acc[j][c] = _mm512_setzero_si512();
        }
    }
    for (; i < nin; i += 2) {
        __m512i x0[4], x1[4];
        for (int c = 0; c < C; c++) {
            x0[c] = _mm512_maskz_loadu_epi8(mask, in[i] + off + 64 * c);
            x1[c] = _mm512_maskz_loadu_epi8(mask, in[i + 1] + off + 64 * c);
        }
        for (int j = 0; j < N; j++) {
            __m512i a0 = _mm512_set1_epi64((long long)affine_of(tables, nin, j, i));
            __m512i a1 = _mm512_set1_epi64((long long)affine_of(tables, nin, j, i + 1));
            for (int c = 0; c < C; c++) {
                __m512i p0 = _mm512_gf2p8affine_epi64_epi8(x0[c], a0, 0);
                __m512i p1 = _mm512_gf2p8affine_epi64_epi8(x1[c], a1, 0);
                acc[j][c] = _mm512_ternarylogic_epi64(acc[j][c], p0, p1, 0x96); /* a ^ b ^ c */
            }
        }
    }
    for (int j = 0; j < N; j++) {
        for (int c = 0; c < C; c++) _mm512_mask_storeu_epi8(out[j] + off + 64 * c, mask, acc[j][c]);
    }
}

INLINE TARGET_GFNI_AVX512 void gfni_avx512_body(const int N, int nin, const uint8_t *tables,
                                                const uint8_t *const *in, uint8_t *const *out, size_t len) {
    const __mmask64 all = ~(__mmask64)0;
    size_t off = 0;
    if (N <= 4) {
        for (; off + 256 <= len; off += 256) gfni_avx512_columns(N, 4, nin, tables, in, out, off, all);
    }
    if (N <= 8) {
        for (; off + 128 <= len; off += 128) gfni_avx512_columns(N, 2, nin, tables, in, out, off, all);
    }
    for (; off + 64 <= len; off += 64) gfni_avx512_columns(N, 1, nin, tables, in, out, off, all);
    if (off < len) gfni_avx512_columns(N, 1, nin, tables, in, out, off, ((__mmask64)1 << (len - off)) - 1);
}

SPECIALIZE_1_TO_8(ssse3, TARGET_SSSE3)
SPECIALIZE_1_TO_8(avx2, TARGET_AVX2)
SPECIALIZE_1_TO_8(gfni_avx2, TARGET_GFNI_AVX2)
SPECIALIZE_1_TO_8(gfni_avx512, TARGET_GFNI_AVX512)
SPECIALIZE_9_TO_16(gfni_avx512, TARGET_GFNI_AVX512)

static const fixed_kernel SSSE3_BY_N[] = {NULL, ssse3_1, ssse3_2, ssse3_3, ssse3_4, ssse3_5, ssse3_6, ssse3_7, ssse3_8};
static const fixed_kernel AVX2_BY_N[] = {NULL, avx2_1, avx2_2, avx2_3, avx2_4, avx2_5, avx2_6, avx2_7, avx2_8};
static const fixed_kernel GFNI_AVX2_BY_N[] = {NULL, gfni_avx2_1, gfni_avx2_2, gfni_avx2_3, gfni_avx2_4,
                                              gfni_avx2_5, gfni_avx2_6, gfni_avx2_7, gfni_avx2_8};
static const fixed_kernel GFNI_AVX512_BY_N[] = {
    NULL, gfni_avx512_1, gfni_avx512_2, gfni_avx512_3, gfni_avx512_4, gfni_avx512_5, gfni_avx512_6,
    gfni_avx512_7, gfni_avx512_8, gfni_avx512_9, gfni_avx512_10, gfni_avx512_11, gfni_avx512_12,
    gfni_avx512_13, gfni_avx512_14, gfni_avx512_15, gfni_avx512_16};

#endif /* CAIRN_X86 */

static const char *const KERNEL_NAMES[CAIRN_GF_KERNELS] = {"portable", "ssse3", "avx2", "gfni-avx2", "gfni-avx512"};

int cairn_gf_kernel_supported(int kernel) {
    switch (kernel) {
    case CAIRN_GF_PORTABLE: return 1;
    case CAIRN_GF_SSSE3: return cairn_cpu.ssse3;
    case CAIRN_GF_AVX2: return cairn_cpu.avx2;
    case CAIRN_GF_GFNI_AVX2: return cairn_cpu.avx2 && cairn_cpu.gfni;
    case CAIRN_GF_GFNI_AVX512: return cairn_cpu.avx512bw && cairn_cpu.gfni;
    default: return 0;
    }
}

int cairn_gf_kernel_best(void) {
    for (int kernel = CAIRN_GF_KERNELS - 1; kernel > 0; kernel--) {
        if (cairn_gf_kernel_supported(kernel)) return kernel;
    }
    return CAIRN_GF_PORTABLE;
}

const char *cairn_gf_kernel_name(int kernel) {
    return kernel >= 0 && kernel < CAIRN_GF_KERNELS ? KERNEL_NAMES[kernel] : "unknown";
}

int cairn_gf_matmul(int kernel, int nin, int nout, const uint8_t *tables,
                    const uint8_t *const *in, uint8_t *const *out, size_t len) {
    if (nin < 1 || nin > 255 || nout < 1 || nout > 255 || tables == NULL || in == NULL || out == NULL) return CAIRN_E_ARG;
    if (!cairn_gf_kernel_supported(kernel)) return CAIRN_E_KERNEL;
    int group = 8;
    const fixed_kernel *by_n = NULL;
#if CAIRN_X86
    switch (kernel) {
    case CAIRN_GF_SSSE3: by_n = SSSE3_BY_N; break;
    case CAIRN_GF_AVX2: by_n = AVX2_BY_N; break;
    case CAIRN_GF_GFNI_AVX2: by_n = GFNI_AVX2_BY_N; break;
    case CAIRN_GF_GFNI_AVX512: by_n = GFNI_AVX512_BY_N; group = 16; break;
    default: break;
    }
#endif
    for (int first = 0; first < nout; first += group) {
        int n = nout - first < group ? nout - first : group;
        const uint8_t *group_tables = tables + (size_t)first * (size_t)nin * CAIRN_GF_TABLE_BYTES;
        if (by_n == NULL) {
            portable_group(nin, n, group_tables, in, out + first, len);
        } else {
            by_n[n](nin, group_tables, in, out + first, len);
        }
    }
    return 0;
}
