/* Declarations shared between the native sources; not part of the cffi interface. */
#ifndef CAIRN_INTERNAL_H
#define CAIRN_INTERNAL_H
#include "cairn.h"

#if defined(__x86_64__) || defined(__i386__)
#define CAIRN_X86 1
#else
#define CAIRN_X86 0
#endif

typedef struct {
    int ssse3, sse42, pclmul, avx2, avx512bw, avx512vl, gfni, vpclmul;
} cairn_cpu_features;

/* Filled once by cairn_cpu_probe() (from cairn_init) and read-only afterwards. */
extern cairn_cpu_features cairn_cpu;
void cairn_cpu_probe(void);

/* GF(2^8) tables, built once by cairn_gf_build_tables() and read-only afterwards. */
extern uint8_t cairn_gf_exp[512];
extern uint8_t cairn_gf_log[256];
void cairn_gf_build_tables(void);

void cairn_crc32c_build_tables(void);

#endif
