/* GF(2^8) arithmetic over the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D), generator 2.
 *
 * Scalar multiply and inverse come from log/exp tables. cairn_gf_prepare turns a coefficient
 * into what the SIMD kernels need to multiply a whole vector of bytes by it:
 *   - two 16-entry tables (products with every low nibble and every high nibble), for pshufb;
 *   - an 8x8 bit matrix for GFNI's affine instruction. GFNI's own multiply is fixed to the AES
 *     polynomial 0x11B, but multiplying by a constant is a linear map over GF(2) in any field
 *     representation, so an affine transform with the right matrix multiplies in 0x11D.
 */
#include "internal.h"

#include <string.h>

uint8_t cairn_gf_exp[512];
uint8_t cairn_gf_log[256];

void cairn_gf_build_tables(void) {
    unsigned value = 1;
    for (int power = 0; power < 255; power++) {
        cairn_gf_exp[power] = (uint8_t)value;
        cairn_gf_log[value] = (uint8_t)power;
        value <<= 1;
        if (value & 0x100) value ^= 0x11D;
    }
    /* Doubled so exp[log a + log b] needs no modulo. */
    for (int power = 255; power < 512; power++) cairn_gf_exp[power] = cairn_gf_exp[power - 255];
    cairn_gf_log[0] = 0; /* never used: zero is handled before any lookup */
}

uint8_t cairn_gf_mul(uint8_t a, uint8_t b) {
    if (a == 0 || b == 0) return 0;
    return cairn_gf_exp[cairn_gf_log[a] + cairn_gf_log[b]];
}

uint8_t cairn_gf_inv(uint8_t a) {
    if (a == 0) return 0; /* zero has no inverse; callers never ask (checked by rs.c) */
    return cairn_gf_exp[255 - cairn_gf_log[a]];
}

/* c * x^j for j = 0..7: the images of the 8 basis bytes. Multiplying by c is linear over GF(2),
 * so these 8 products determine every table below (doubling is a shift and a conditional XOR). */
static void basis_products(uint8_t c, uint8_t products[8]) {
    products[0] = c;
    for (int j = 1; j < 8; j++) {
        uint8_t previous = products[j - 1];
        products[j] = (uint8_t)((previous << 1) ^ ((previous & 0x80) ? 0x1D : 0));
    }
}

/* Row i of the matrix (byte 7 - i of the qword) selects the input bits whose parity gives
 * output bit i; input bit j contributes c * x^j, so row i holds bit i of each c * x^j. */
static uint64_t affine_matrix(const uint8_t products[8]) {
    uint64_t matrix = 0;
    for (int out_bit = 0; out_bit < 8; out_bit++) {
        unsigned row = 0;
        for (int in_bit = 0; in_bit < 8; in_bit++) row |= (unsigned)((products[in_bit] >> out_bit) & 1) << in_bit;
        matrix |= (uint64_t)row << (8 * (7 - out_bit));
    }
    return matrix;
}

/* Runs on every decode (a new erasure pattern), so it avoids per-byte multiplications. */
void cairn_gf_prepare(const uint8_t *coefficients, size_t count, uint8_t *tables) {
    for (size_t n = 0; n < count; n++) {
        uint8_t products[8];
        uint8_t *entry = tables + n * CAIRN_GF_TABLE_BYTES;
        basis_products(coefficients[n], products);
        entry[0] = entry[16] = 0;
        for (int nibble = 1; nibble < 16; nibble++) {
            int low_bit = __builtin_ctz((unsigned)nibble), rest = nibble & (nibble - 1);
            entry[nibble] = entry[rest] ^ products[low_bit];
            entry[16 + nibble] = entry[16 + rest] ^ products[4 + low_bit];
        }
        uint64_t matrix = affine_matrix(products);
        memcpy(entry + 32, &matrix, sizeof matrix); /* little-endian, as the instruction reads it */
    }
}
