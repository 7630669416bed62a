/* PLACEHOLDER */
#include "internal.h"
uint8_t cairn_gf_exp[512];
uint8_t cairn_gf_log[256];
void cairn_gf_build_tables(void) {}
int cairn_gf_kernel_supported(int kernel) { return 0; }
int cairn_gf_kernel_best(void) { return 0; }
const char *cairn_gf_kernel_name(int kernel) { return "x"; }
uint8_t cairn_gf_mul(uint8_t a, uint8_t b) { return 0; }
uint8_t cairn_gf_inv(uint8_t a) { return 0; }
void cairn_gf_prepare(const uint8_t *coefficients, size_t count, uint8_t *tables) {}
int cairn_gf_matmul(int kernel, int nin, int nout, const uint8_t *tables, const uint8_t *const *in, uint8_t *const *out, size_t len) { return -1; }
int cairn_rs_generator(int k, int m, uint8_t *matrix) { return -1; }
int cairn_gf_invert(int n, const uint8_t *a, uint8_t *out) { return -1; }
int cairn_rs_decode_matrix(int k, int m, const uint8_t *present, const uint8_t *wanted, int nwanted, uint8_t *out) { return -1; }
