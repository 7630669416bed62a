/* Cairn native core: the C declarations shared by the sources and the cffi binding.
 *
 * native/build.py feeds this file to cffi's cdef after dropping every line that starts with '#',
 * so everything outside preprocessor lines must stay plain C declarations that cffi can parse.
 * All functions work on caller-owned buffers, keep no global mutable state after cairn_init(),
 * and are safe to call from many threads at once (cffi releases the GIL around each call).
 * Return codes: 0 or a count on success, a negative CAIRN_E* value on bad input.
 */
#ifndef CAIRN_H
#define CAIRN_H
#include <stddef.h>
#include <stdint.h>

#define CAIRN_E_ARG -1
#define CAIRN_E_KERNEL -2
#define CAIRN_E_SINGULAR -3

/* Builds the field tables and probes the CPU. Idempotent; call once before anything else. */
int cairn_init(void);

/* ---- Galois field GF(2^8), polynomial 0x11D, and Reed-Solomon ---- */

/* Kernel ids for cairn_gf_matmul, from slowest to fastest. */
#define CAIRN_GF_PORTABLE 0
#define CAIRN_GF_SSSE3 1
#define CAIRN_GF_AVX2 2
#define CAIRN_GF_GFNI_AVX2 3
#define CAIRN_GF_GFNI_AVX512 4
#define CAIRN_GF_KERNELS 5

/* Bytes of prepared tables per coefficient: 16 low-nibble products, 16 high-nibble products,
 * then the 8-byte GF(2) affine matrix for GFNI. */
#define CAIRN_GF_TABLE_BYTES 40

int cairn_gf_kernel_supported(int kernel);
int cairn_gf_kernel_best(void);
const char *cairn_gf_kernel_name(int kernel);

uint8_t cairn_gf_mul(uint8_t a, uint8_t b);
uint8_t cairn_gf_inv(uint8_t a);

/* tables: count * CAIRN_GF_TABLE_BYTES bytes, one entry per coefficient. */
void cairn_gf_prepare(const uint8_t *coefficients, size_t count, uint8_t *tables);

/* out[j] = sum over i of matrix[j][i] * in[i], for j < nout, i < nin, over len bytes each.
 * tables holds the prepared nout x nin matrix, row-major. Outputs are overwritten. */
int cairn_gf_matmul(int kernel, int nin, int nout, const uint8_t *tables,
                    const uint8_t *const *in, uint8_t *const *out, size_t len);

/* Systematic generator: (k + m) x k, identity on top, a Cauchy matrix below. */
int cairn_rs_generator(int k, int m, uint8_t *matrix);

/* Inverts the n x n matrix a into out; CAIRN_E_SINGULAR if it has no inverse. */
int cairn_gf_invert(int n, const uint8_t *a, uint8_t *out);

/* Rows that rebuild fragments `wanted` (indexes < k + m) from the k fragments `present`
 * (distinct indexes < k + m, any order): out is nwanted x k, matching the order of `present`. */
int cairn_rs_decode_matrix(int k, int m, const uint8_t *present, const uint8_t *wanted,
                           int nwanted, uint8_t *out);

/* ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---- */

#define CAIRN_CRC_PORTABLE 0
#define CAIRN_CRC_SSE42 1
#define CAIRN_CRC_PCLMUL 2
#define CAIRN_CRC_VPCLMUL 3
#define CAIRN_CRC_KERNELS 4

int cairn_crc_kernel_supported(int kernel);
int cairn_crc_kernel_best(void);
const char *cairn_crc_kernel_name(int kernel);

/* Standard CRC32C: crc is the value returned for the preceding bytes (0 to start), so
 * cairn_crc32c(k, cairn_crc32c(k, 0, a, n), b, p) == CRC32C of a followed by b.
 * An unsupported kernel returns the portable result (callers check support first). */
uint32_t cairn_crc32c(int kernel, uint32_t crc, const uint8_t *buf, size_t len);

/* The same over `const char *`: cffi passes a Python bytes object to a char pointer directly,
 * without building a buffer object, which matters for small fragments. */
uint32_t cairn_crc32c_chars(int kernel, uint32_t crc, const char *buf, size_t len);

/* ---- Content-defined chunking: gear hash, FastCDC-style normalized cuts ---- */

typedef struct {
    uint64_t min_size;
    uint64_t avg_size;
    uint64_t max_size;
    uint64_t mask_small; /* used while the chunk is shorter than avg_size (harder to match) */
    uint64_t mask_large; /* used from avg_size on (easier to match); a subset of mask_small */
    uint64_t hash;       /* gear hash of the bytes seen in the current chunk */
    uint64_t length;     /* bytes of the current chunk seen so far */
} cairn_cdc;

/* Validates sizes (64 <= min <= avg <= max, avg a power of two, max < 2^40) and sets masks
 * with `normalization` bits moved between them (FastCDC level, 0..3). */
int cairn_cdc_init(cairn_cdc *state, uint64_t min_size, uint64_t avg_size, uint64_t max_size,
                   int normalization);

/* Scans buf, writing the length of every chunk that ends inside it to lengths (at most
 * max_cuts). Returns how many were written; *consumed says how many bytes of buf were scanned
 * (less than len only when lengths filled up). The bytes after the last cut stay in the state. */
int64_t cairn_cdc_scan(cairn_cdc *state, const uint8_t *buf, size_t len, uint64_t *lengths,
                       size_t max_cuts, size_t *consumed);

#endif
