/* CPU feature probe: decides once which SIMD kernels may run on this machine. */
#include "internal.h"

cairn_cpu_features cairn_cpu;

void cairn_cpu_probe(void) {
#if CAIRN_X86 && defined(__GNUC__)
    /* libgcc's probe also checks that the OS saves the YMM/ZMM state (XGETBV). */
    __builtin_cpu_init();
    cairn_cpu.ssse3 = __builtin_cpu_supports("ssse3") != 0;
    cairn_cpu.sse42 = __builtin_cpu_supports("sse4.2") != 0;
    cairn_cpu.pclmul = __builtin_cpu_supports("pclmul") != 0;
    cairn_cpu.avx2 = __builtin_cpu_supports("avx2") != 0;
    cairn_cpu.avx512bw = __builtin_cpu_supports("avx512bw") != 0 && __builtin_cpu_supports("avx512f") != 0;
    cairn_cpu.avx512vl = __builtin_cpu_supports("avx512vl") != 0;
    cairn_cpu.gfni = __builtin_cpu_supports("gfni") != 0;
    cairn_cpu.vpclmul = __builtin_cpu_supports("vpclmulqdq") != 0;
#endif
}

int cairn_init(void) {
    static volatile int done = 0;
    if (done) return 0;
    cairn_cpu_probe();
    cairn_gf_build_tables();
    cairn_crc32c_build_tables();
    done = 1;
    return 0;
}
