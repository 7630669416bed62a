/* Reed-Solomon code construction: the systematic generator and the decode matrices.
 *
 * The generator is (k + m) x k: the identity (data fragments are stored as they are), then an
 * m x k Cauchy matrix C[i][j] = 1 / (x_i + y_j) with x_i = k + i and y_j = j. The x and y are
 * distinct field elements, so every square submatrix of C is invertible, which makes every
 * k x k submatrix of the generator invertible: any k fragments rebuild the chunk (MDS).
 * Decoding inverts the rows of the k surviving fragments; multiplying a wanted fragment's
 * generator row by that inverse gives the row that rebuilds it from the survivors.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int profile_valid(int k, int m) { return k >= 1 && m >= 1 && k + m <= 255; }

static void generator_row(int k, int row, uint8_t *out) {
    if (row < k) {
        memset(out, 0, (size_t)k);
        out[row] = 1;
        return;
    }
    for (int j = 0; j < k; j++) out[j] = cairn_gf_inv((uint8_t)(row ^ j)); /* x_i = row = k + i */
}

int cairn_rs_generator(int k, int m, uint8_t *matrix) {
    if (!profile_valid(k, m) || matrix == NULL) return CAIRN_E_ARG;
    for (int row = 0; row < k + m; row++) generator_row(k, row, matrix + (size_t)row * (size_t)k);
    return 0;
}

static void scale_row(uint8_t *row, int n, uint8_t factor) {
    for (int j = 0; j < n; j++) row[j] = cairn_gf_mul(row[j], factor);
}

static void add_scaled_row(uint8_t *target, const uint8_t *source, int n, uint8_t factor) {
    for (int j = 0; j < n; j++) target[j] ^= cairn_gf_mul(source[j], factor);
}

/* Gauss-Jordan elimination on a working copy; `out` starts as the identity. */
int cairn_gf_invert(int n, const uint8_t *a, uint8_t *out) {
    if (n < 1 || n > 255 || a == NULL || out == NULL) return CAIRN_E_ARG;
    size_t size = (size_t)n * (size_t)n;
    uint8_t *work = malloc(size);
    if (work == NULL) return CAIRN_E_ARG;
    memcpy(work, a, size);
    memset(out, 0, size);
    for (int i = 0; i < n; i++) out[(size_t)i * n + i] = 1;

    for (int col = 0; col < n; col++) {
        int pivot = col;
        while (pivot < n && work[(size_t)pivot * n + col] == 0) pivot++;
        if (pivot == n) {
            free(work);
            return CAIRN_E_SINGULAR;
        }
        if (pivot != col) {
            for (int j = 0; j < n; j++) {
                uint8_t t = work[(size_t)col * n + j];
                work[(size_t)col * n + j] = work[(size_t)pivot * n + j];
                work[(size_t)pivot * n + j] = t;
                t = out[(size_t)col * n + j];
                out[(size_t)col * n + j] = out[(size_t)pivot * n + j];
                out[(size_t)pivot * n + j] = t;
            }
        }
        uint8_t scale = cairn_gf_inv(work[(size_t)col * n + col]);
        scale_row(work + (size_t)col * n, n, scale);
        scale_row(out + (size_t)col * n, n, scale);
        for (int row = 0; row < n; row++) {
            uint8_t factor = work[(size_t)row * n + col];
            if (row == col || factor == 0) continue;
            add_scaled_row(work + (size_t)row * n, work + (size_t)col * n, n, factor);
            add_scaled_row(out + (size_t)row * n, out + (size_t)col * n, n, factor);
        }
    }
    free(work);
    return 0;
}

static int indexes_valid(const uint8_t *indexes, int count, int limit, int distinct) {
    uint8_t seen[256] = {0};
    for (int i = 0; i < count; i++) {
        if (indexes[i] >= limit) return 0;
        if (distinct && seen[indexes[i]]) return 0;
        seen[indexes[i]] = 1;
    }
    return 1;
}

int cairn_rs_decode_matrix(int k, int m, const uint8_t *present, const uint8_t *wanted,
                           int nwanted, uint8_t *out) {
    if (!profile_valid(k, m) || present == NULL || wanted == NULL || out == NULL) return CAIRN_E_ARG;
    if (nwanted < 1 || nwanted > k + m) return CAIRN_E_ARG;
    if (!indexes_valid(present, k, k + m, 1) || !indexes_valid(wanted, nwanted, k + m, 0)) return CAIRN_E_ARG;

    size_t size = (size_t)k * (size_t)k;
    uint8_t *rows = malloc(2 * size + (size_t)k);
    if (rows == NULL) return CAIRN_E_ARG;
    uint8_t *inverse = rows + size, *wanted_row = rows + 2 * size;
    for (int i = 0; i < k; i++) generator_row(k, present[i], rows + (size_t)i * k);
    int status = cairn_gf_invert(k, rows, inverse);
    if (status == 0) {
        /* out[w] = generator_row(wanted[w]) x inverse: the fragment as a sum of survivors. */
        for (int w = 0; w < nwanted; w++) {
            uint8_t *target = out + (size_t)w * k;
            generator_row(k, wanted[w], wanted_row);
            memset(target, 0, (size_t)k);
            for (int i = 0; i < k; i++) {
                if (wanted_row[i]) add_scaled_row(target, inverse + (size_t)i * k, k, wanted_row[i]);
            }
        }
    }
    free(rows);
    return status;
}
