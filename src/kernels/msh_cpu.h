/* CPU drivers of the FP32 -> FP16 / BF16 element conversions defined in msh_scalar.h.
 * Buffers are little-endian and need no alignment. The SIMD versions (AVX2 + F16C, chosen at
 * run time) give the same bytes as the _ref loops; tests/unit/test_convert.c checks every FP32
 * bit pattern. */
#ifndef MSH_CPU_H
#define MSH_CPU_H

#include "common/msh_common.h"
#include "common/msh_table.h"
#include "kernels/msh_scalar.h"

typedef struct msh_f16_bounds {
    uint32_t min_abs; /* FP32 bits of the smallest magnitude kept (values below become it) */
    uint32_t max_abs; /* FP32 bits of the largest magnitude kept */
} msh_f16_bounds;

/* Default bounds: smallest FP16 subnormal and 65504. */
void msh_f16_bounds_default(msh_f16_bounds *b);

/* Convert n FP32 values; returns how many were clamped. */
uint64_t msh_f32_to_f16_buf_ref(const uint8_t *src, uint8_t *dst, size_t n,
                                const msh_f16_bounds *b);
uint64_t msh_f32_to_f16_buf_simd(const uint8_t *src, uint8_t *dst, size_t n,
                                 const msh_f16_bounds *b);
void msh_f32_to_bf16_buf_ref(const uint8_t *src, uint8_t *dst, size_t n);
void msh_f32_to_bf16_buf_simd(const uint8_t *src, uint8_t *dst, size_t n);

/* 1 when this CPU runs the SIMD versions (AVX2 and F16C) and scalar is not forced (build
 * option MSH_FORCE_SCALAR, or environment MSH_FORCE_SCALAR=1). */
int msh_cpu_has_simd(void);

/* Dispatching versions: SIMD when available, else the reference loops. */
uint64_t msh_f32_to_f16_buf(const uint8_t *src, uint8_t *dst, size_t n, const msh_f16_bounds *b);
void msh_f32_to_bf16_buf(const uint8_t *src, uint8_t *dst, size_t n);

/* The range test of FP16 conversion over n FP32 values (msh_f16_range_class): how many are
 * non-zero finite, below FP16's normal range, above its largest value, and the largest finite
 * magnitude (FP32 bits). Counts add and maxima compare, so pieces combine in any order. */
typedef struct msh_f16_range {
    uint64_t nonzero, below, above;
    uint32_t max_bits;
} msh_f16_range;

void msh_f16_range_buf(const uint8_t *src, size_t n, msh_f16_range *r);

/* msh_f32_to_f16_buf and msh_f16_range_buf (into *r) in one pass over the values. */
uint64_t msh_f32_to_f16_range_buf(const uint8_t *src, uint8_t *dst, size_t n,
                                  const msh_f16_bounds *b, msh_f16_range *r);

/* The precision plan's rule: a tensor of rank `ndim` stays FP32 when FP16 cannot hold it, that
 * is when any finite value is above 65504 (MSH_F16_KEEP_ABOVE), or, for a matrix or kernel (rank
 * 2 or more) with at least MSH_F16_BELOW_MIN non-zero values, when more than 1 in
 * MSH_F16_BELOW_DIVISOR of them are below 2^-14, FP16's smallest normal, where they would become
 * subnormal or zero and lose their relative precision (MSH_F16_KEEP_BELOW): such a weight
 * multiplies every activation it meets. A vector (a bias, a BatchNorm statistic) or a scalar (an
 * epsilon) meets one value per channel: FP16's absolute error there (at most 2^-24) is below what
 * the activations can resolve, and FP16's smallest subnormal keeps an epsilon off zero where a
 * Cast of an FP32 value would not. 0: convert it. */
#define MSH_F16_BELOW_DIVISOR 10
#define MSH_F16_BELOW_MIN 16
enum { MSH_F16_KEEP_ABOVE = 1, MSH_F16_KEEP_BELOW = 2 };
static inline int msh_f16_range_keep(const msh_f16_range *r, size_t ndim) {
    if (r->above)
        return MSH_F16_KEEP_ABOVE;
    if (ndim >= 2 && r->nonzero >= MSH_F16_BELOW_MIN &&
        r->below * MSH_F16_BELOW_DIVISOR > r->nonzero)
        return MSH_F16_KEEP_BELOW;
    return 0;
}

/* INT8 per channel. Element i of the buffer is element `first + i` of the tensor, whose channel
 * is ((first + i) / inner) % channels. */
void msh_int8_absmax(const uint8_t *src, size_t n, int64_t first, int64_t inner, int64_t channels,
                     float *absmax);
void msh_int8_quantize(const uint8_t *src, uint8_t *dst, size_t n, int64_t first, int64_t inner,
                       int64_t channels, const float *scales);

/* INT4 blockwise (msh_scalar.h), laid out by msh_int4_layout (common/msh_table.h). */

/* Block statistics of n FP32 values, elements first .. first + n - 1 of a tensor whose blocks run
 * along its rows (axis 1): out[2k], out[2k + 1] are min(0, w) and max(0, w) of block b0 + k over
 * these values, b0 the block of element `first`. Returns the number of blocks touched. */
int64_t msh_int4_stats(const uint8_t *src, size_t n, int64_t first, int64_t cols, int64_t block,
                       float *out);
/* Column statistics of `nrows` rows of `cols` FP32 values (blocks along the columns, a weight
 * [K, N]): lo[c], hi[c] become min(lo[c], w) and max(hi[c], w) over column c's finite values
 * (start them at 0 for a block's min(0, w), max(0, w)). */
void msh_int4_colstats(const float *w, int64_t nrows, int64_t cols, float *lo, float *hi);
/* Quantize n FP32 values (elements first .. first + n - 1, `first` even) into ceil(n / 2) bytes,
 * two per byte, the first in the low nibble (an odd last value leaves the high nibble 0). */
void msh_int4_quantize(const uint8_t *src, uint8_t *dst, size_t n, int64_t first,
                       const msh_int4_layout *l);
/* The clipping search (msh_int4_search_ref) over the blocks of n FP32 values, elements first ..
 * first + n - 1 of a [rows, cols] tensor whose blocks (at most 128 values) run along its rows:
 * out[2k], out[2k + 1] are the clipped (lo, hi) chosen for the k-th block. The values must
 * start and end on block boundaries (a block cut by them would be searched on its part only).
 * `store`: 10 / 16 when the scales will be stored as FP16 / BF16. Returns the blocks written. */
int64_t msh_int4_search(const uint8_t *src, size_t n, int64_t first, int64_t cols, int64_t block,
                        int asym, int store, float *out);

/* For tests (tests/unit/test_int4_search_simd.c): one block's search as msh_int4_search does it
 * (AVX2, or msh_int4_search_ref), with the 20 candidates' errors in err (the scalar path:
 * msh_int4_search_error's). n <= 128. Hidden like every internal function. */
int msh_int4_search_block_test(const float *w, int64_t n, int asym, int store, float *lo_out,
                               float *hi_out, float *err);

#endif
