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

/* Row i of the matrix (byte 7 - i of the qword) selects the input bits whose parity gives
 * output bit i; input bit j contributes c * x^j, so row i holds bit i of each c * x^j. */
static uint64_t affine_matrix(uint8_t c) {
    uint64_t matrix = 0;
    for (int out_bit = 0; out_bit < 8; out_bit++) {
        uint8_t row = 0;
        for (int in_bit = 0; in_bit < 8; in_bit++) {
            if ((cairn_gf_mul(c, (uint8_t)(1u << in_bit)) >> out_bit) & 1) row |= (uint8_t)(1u << in_bit);
        }
        matrix |= (uint64_t)row << (8 * (7 - out_bit));
    }
    return matrix;
}

void cairn_gf_prepare(const uint8_t *coefficients, size_t count, uint8_t *tables) {
    for (size_t n = 0; n < count; n++) {
        uint8_t c = coefficients[n];
        uint8_t *entry = tables + n * CAIRN_GF_TABLE_BYTES;
        for (int nibble = 0; nibble < 16; nibble++) {
            entry[nibble] = cairn_gf_mul(c, (uint8_t)nibble);
            entry[16 + nibble] = cairn_gf_mul(c, (uint8_t)(nibble << 4));
        }
        uint64_t matrix = affine_matrix(c);
        memcpy(entry + 32, &matrix, sizeof matrix); /* little-endian, as the instruction reads it */
    }
}
