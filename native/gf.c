/* PLACEHOLDER */
#include "internal.h"
uint8_t cairn_gf_exp[512];
uint8_t cairn_gf_log[256];
void cairn_gf_build_tables(void) {}
