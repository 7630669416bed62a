/* Benchmark driver: Cairn's native core against Intel ISA-L, in C, in one process.
 *
 * Built by ops/bench/native.py together with native/*.c. ISA-L libraries are dlopen()ed by path
 * (`--ref NAME=PATH`, any number), so two ISA-L versions run side by side with Cairn. Every case
 * times each implementation in turn, round after round, on thread CPU time (the machines are
 * shared), and prints one JSON line with the median GB/s of input per implementation.
 *
 * usage: native_driver [--quick] [--ref NAME=PATH]... CASE...
 *   encode:K:M:FRAGMENT_BYTES   decode:K:M:FRAGMENT_BYTES:LOST   crc:BYTES
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cairn.h"

typedef struct {
    const char *name;
    void (*gen_cauchy1_matrix)(unsigned char *a, int m, int k);
    void (*ec_init_tables)(int k, int rows, unsigned char *a, unsigned char *tables);
    void (*ec_encode_data)(int len, int k, int rows, unsigned char *tables, unsigned char **data, unsigned char **coding);
    int (*gf_invert_matrix)(unsigned char *in, unsigned char *out, const int n);
    unsigned int (*crc32_iscsi)(unsigned char *buffer, int len, unsigned int init);
} isal;

enum { REFS_MAX = 4, IMPLS_MAX = REFS_MAX + 1, ROUNDS_MAX = 15 };
static isal refs[REFS_MAX];
static int nrefs = 0;
static int rounds = 9;
static double sample_seconds = 0.05;

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *need(void *handle, const char *lib, const char *symbol) {
    void *f = dlsym(handle, symbol);
    if (f == NULL) {
        fprintf(stderr, "native_driver: %s has no symbol %s\n", lib, symbol);
        exit(2);
    }
    return f;
}

static void load_ref(const char *spec) {
    const char *eq = strchr(spec, '=');
    if (eq == NULL || nrefs == REFS_MAX) {
        fprintf(stderr, "native_driver: bad --ref %s (NAME=PATH, at most %d)\n", spec, REFS_MAX);
        exit(2);
    }
    isal *r = &refs[nrefs++];
    r->name = strndup(spec, (size_t)(eq - spec));
    void *h = dlopen(eq + 1, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "native_driver: cannot load %s: %s\n", eq + 1, dlerror());
        exit(2);
    }
    r->gen_cauchy1_matrix = need(h, eq + 1, "gf_gen_cauchy1_matrix");
    r->ec_init_tables = need(h, eq + 1, "ec_init_tables");
    r->ec_encode_data = need(h, eq + 1, "ec_encode_data");
    r->gf_invert_matrix = need(h, eq + 1, "gf_invert_matrix");
    r->crc32_iscsi = need(h, eq + 1, "crc32_iscsi");
}

/* ---- the work, per implementation (0 = Cairn, 1.. = refs) */

typedef struct {
    int k, m, lost;
    size_t len;
    unsigned char **frags; /* k + m fragments, data then parity */
    unsigned char **out;   /* m scratch outputs */
    unsigned char *cairn_tables, *isal_tables[REFS_MAX];
    unsigned char *isal_matrix; /* (k + m) x k */
    unsigned volatile sink;
} work;

static unsigned char *random_bytes(size_t n, unsigned seed) {
    unsigned char *b = aligned_alloc(64, (n + 63) & ~(size_t)63);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (unsigned char)(seed >> 16);
    }
    return b;
}

static void encode_once(work *w, int impl) {
    if (impl == 0) {
        cairn_gf_matmul(cairn_gf_kernel_best(), w->k, w->m, w->cairn_tables,
                        (const uint8_t *const *)w->frags, w->out, w->len);
    } else {
        refs[impl - 1].ec_encode_data((int)w->len, w->k, w->m, w->isal_tables[impl - 1], w->frags, w->out);
    }
}

/* Data fragments 0..lost-1 are gone; survivors are the other data fragments and the first
 * `lost` parity fragments. Timed: decode matrix (inversion), tables, multiplication. */
static void decode_once(work *w, int impl) {
    int k = w->k, lost = w->lost;
    unsigned char *survivors[256], rows[256 * 256], tables[256 * 8 * CAIRN_GF_TABLE_BYTES];
    for (int i = 0; i < k; i++) survivors[i] = w->frags[i < k - lost ? lost + i : k + (i - (k - lost))];
    if (impl == 0) {
        uint8_t present[256], wanted[256];
        for (int i = 0; i < k; i++) present[i] = (uint8_t)(i < k - lost ? lost + i : k + (i - (k - lost)));
        for (int i = 0; i < lost; i++) wanted[i] = (uint8_t)i;
        cairn_rs_decode_matrix(k, w->m, present, wanted, lost, rows);
        cairn_gf_prepare(rows, (size_t)lost * k, tables);
        cairn_gf_matmul(cairn_gf_kernel_best(), k, lost, tables, (const uint8_t *const *)survivors, w->out, w->len);
        return;
    }
    isal *r = &refs[impl - 1];
    unsigned char sub[256 * 256], inverse[256 * 256];
    for (int i = 0; i < k; i++) {
        int row = i < k - lost ? lost + i : k + (i - (k - lost));
        memcpy(sub + i * k, w->isal_matrix + row * k, (size_t)k);
    }
    r->gf_invert_matrix(sub, inverse, k);
    for (int i = 0; i < lost; i++) memcpy(rows + i * k, inverse + i * k, (size_t)k);
    r->ec_init_tables(k, lost, rows, tables);
    r->ec_encode_data((int)w->len, k, lost, tables, survivors, w->out);
}

static void crc_once(work *w, int impl) {
    if (impl == 0) {
        w->sink += cairn_crc32c(cairn_crc_kernel_best(), 0, w->frags[0], w->len);
    } else {
        w->sink += refs[impl - 1].crc32_iscsi(w->frags[0], (int)w->len, 0);
    }
}

/* ---- timing */

typedef void (*op)(work *, int);

static double rate(work *w, op f, int impl, long iterations, double bytes) {
    double start = cpu_now();
    for (long i = 0; i < iterations; i++) f(w, impl);
    double seconds = cpu_now() - start;
    return bytes * (double)iterations / seconds / 1e9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void measure(const char *label, work *w, op f, double bytes) {
    long iterations[IMPLS_MAX];
    double samples[IMPLS_MAX][ROUNDS_MAX];
    int impls = 1 + nrefs;
    for (int impl = 0; impl < impls; impl++) { /* calibrate: one sample takes ~sample_seconds */
        long n = 1;
        double start;
        for (;;) {
            start = cpu_now();
            for (long i = 0; i < n; i++) f(w, impl);
            if (cpu_now() - start > sample_seconds / 4 || n > (1L << 30)) break;
            n *= 2;
        }
        double per = (cpu_now() - start) / (double)n;
        iterations[impl] = (long)(sample_seconds / (per > 1e-9 ? per : 1e-9)) + 1;
    }
    for (int round = 0; round < rounds; round++) {
        for (int impl = 0; impl < impls; impl++) samples[impl][round] = rate(w, f, impl, iterations[impl], bytes);
    }
    printf("{\"case\": \"%s\", \"bytes\": %.0f, \"gbps\": {", label, bytes);
    for (int impl = 0; impl < impls; impl++) {
        qsort(samples[impl], (size_t)rounds, sizeof(double), by_value);
        printf("%s\"%s\": %.4f", impl ? ", " : "", impl ? refs[impl - 1].name : "cairn", samples[impl][rounds / 2]);
    }
    printf("}}\n");
    fflush(stdout);
}

/* ---- cases */

static void setup(work *w, int k, int m, size_t len) {
    memset(w, 0, sizeof *w);
    w->k = k, w->m = m, w->len = len;
    w->frags = calloc((size_t)(k + m), sizeof *w->frags);
    w->out = calloc((size_t)m, sizeof *w->out);
    for (int i = 0; i < k + m; i++) w->frags[i] = random_bytes(len, 7u + (unsigned)i);
    for (int i = 0; i < m; i++) w->out[i] = random_bytes(len, 99u + (unsigned)i);
    unsigned char generator[256 * 256];
    cairn_rs_generator(k, m, generator);
    w->cairn_tables = malloc((size_t)(k * m) * CAIRN_GF_TABLE_BYTES);
    cairn_gf_prepare(generator + k * k, (size_t)(k * m), w->cairn_tables);
    w->isal_matrix = malloc((size_t)((k + m) * k));
    for (int r = 0; r < nrefs; r++) {
        refs[r].gen_cauchy1_matrix(w->isal_matrix, k + m, k);
        w->isal_tables[r] = malloc((size_t)(k * m) * 32);
        refs[r].ec_init_tables(k, m, w->isal_matrix + k * k, w->isal_tables[r]);
    }
}

static void teardown(work *w) {
    for (int i = 0; i < w->k + w->m; i++) free(w->frags[i]);
    for (int i = 0; i < w->m; i++) free(w->out[i]);
    for (int r = 0; r < nrefs; r++) free(w->isal_tables[r]);
    free(w->frags), free(w->out), free(w->cairn_tables), free(w->isal_matrix);
}

static void check_decode(work *w, int impl) {
    /* frags hold data + parity from the last encode; decoding must give back the lost data. */
    decode_once(w, impl);
    for (int i = 0; i < w->lost; i++) {
        if (memcmp(w->out[i], w->frags[i], w->len) != 0) {
            fprintf(stderr, "native_driver: %s decoded fragment %d wrongly\n", impl ? refs[impl - 1].name : "cairn", i);
            exit(3);
        }
    }
}

static void run_case(const char *spec) {
    int k, m, lost;
    size_t len;
    work w;
    if (sscanf(spec, "encode:%d:%d:%zu", &k, &m, &len) == 3) {
        setup(&w, k, m, len);
        measure(spec, &w, encode_once, (double)k * (double)len);
    } else if (sscanf(spec, "decode:%d:%d:%zu:%d", &k, &m, &len, &lost) == 4 && lost <= m) {
        setup(&w, k, m, len);
        w.lost = lost;
        for (int impl = 0; impl < 1 + nrefs; impl++) {
            /* Parity made by this implementation's own matrix, then decoded by it. */
            if (impl == 0) {
                encode_once(&w, 0);
            } else {
                refs[impl - 1].ec_encode_data((int)len, k, m, w.isal_tables[impl - 1], w.frags, w.out);
            }
            for (int j = 0; j < m; j++) memcpy(w.frags[k + j], w.out[j], len);
            check_decode(&w, impl);
        }
        measure(spec, &w, decode_once, (double)k * (double)len);
    } else if (sscanf(spec, "crc:%zu", &len) == 1) {
        setup(&w, 1, 1, len);
        unsigned expected = cairn_crc32c(CAIRN_CRC_PORTABLE, 0, w.frags[0], len);
        if (cairn_crc32c(cairn_crc_kernel_best(), 0, w.frags[0], len) != expected) {
            fprintf(stderr, "native_driver: CRC32C kernel disagrees with portable\n");
            exit(3);
        }
        measure(spec, &w, crc_once, (double)len);
    } else {
        fprintf(stderr, "native_driver: bad case %s\n", spec);
        exit(2);
    }
    teardown(&w);
}

int main(int argc, char **argv) {
    cairn_init();
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--quick") == 0) {
            rounds = 5, sample_seconds = 0.01;
        } else if (strcmp(argv[a], "--ref") == 0 && a + 1 < argc) {
            load_ref(argv[++a]);
        } else {
            run_case(argv[a]);
        }
    }
    fprintf(stderr, "kernels: rs=%s crc=%s\n", cairn_gf_kernel_name(cairn_gf_kernel_best()),
            cairn_crc_kernel_name(cairn_crc_kernel_best()));
    return 0;
}
