/* PLACEHOLDER: being written (content-defined chunker). */
#include "internal.h"
int cairn_cdc_init(cairn_cdc *state, uint64_t min_size, uint64_t avg_size, uint64_t max_size, int normalization) { return CAIRN_E_ARG; }
int64_t cairn_cdc_scan(cairn_cdc *state, const uint8_t *buf, size_t len, uint64_t *lengths, size_t max_cuts, size_t *consumed) { return CAIRN_E_ARG; }
