/* PLACEHOLDER: being written (CRC32C kernels). */
#include "internal.h"
void cairn_crc32c_build_tables(void) {}
int cairn_crc_kernel_supported(int kernel) { return kernel == CAIRN_CRC_PORTABLE; }
int cairn_crc_kernel_best(void) { return CAIRN_CRC_PORTABLE; }
const char *cairn_crc_kernel_name(int kernel) { return "portable"; }
uint32_t cairn_crc32c(int kernel, uint32_t crc, const uint8_t *buf, size_t len) { return 0; }
