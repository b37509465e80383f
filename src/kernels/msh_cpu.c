#include "kernels/msh_cpu.h"

#include <pthread.h>
#include <stdlib.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(MSH_FORCE_SCALAR)
#define MSH_X86_SIMD 1
#include <cpuid.h>
#include <immintrin.h>
#endif

void msh_f16_bounds_default(msh_f16_bounds *b) {
    b->min_abs = MSH_F16_MIN_SUBNORMAL_BITS;
    b->max_abs = MSH_F16_MAX_BITS;
}

static uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* x86 and every target we build for are little-endian */
    return v;
}

uint64_t msh_f32_to_f16_buf_ref(const uint8_t *src, uint8_t *dst, size_t n,
                                const msh_f16_bounds *b) {
    uint64_t clamped = 0;
    for (size_t i = 0; i < n; i++) {
        int c;
        uint16_t h = msh_f32_to_f16_ref(ld32(src + 4 * i), b->min_abs, b->max_abs, &c);
        memcpy(dst + 2 * i, &h, 2);
        clamped += (uint64_t)c;
    }
    return clamped;
}

void msh_f32_to_bf16_buf_ref(const uint8_t *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h = msh_f32_to_bf16_ref(ld32(src + 4 * i));
        memcpy(dst + 2 * i, &h, 2);
    }
}

static void range_ref(const uint8_t *src, size_t n, msh_f16_range *r);

#if defined(MSH_X86_SIMD) /* up to the FP16 kernel's end */
/* The sum of 8 unsigned 32-bit lanes. */
__attribute__((target("avx2"))) static inline uint64_t hsum32(__m256i v) {
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)(void *)lanes, v);
    uint64_t t = 0;
    for (int k = 0; k < 8; k++)
        t += lanes[k];
    return t;
}

/* Constants and running counts of the FP16 kernel. */
typedef struct f16_k {
    __m256i absmask, inf, vmin, vmax, zero, minn, maxh;
    __m128i h_abs, h_zero, h_inf, h_one, h_max;
    int hi_is_big; /* the clamp bound is FP16's largest value: "above" is the clamp mask */
} f16_k;

typedef struct f16_acc {
    __m256i nz, lo, hi, mx; /* range test: counts in 32-bit lanes (masks are -1: subtract) */
    uint64_t clamped;
} f16_acc;

/* 8 values: convert (msh_f32_to_f16_ref) and, when `range` (a constant at each call site),
 * classify them (msh_f16_range_class). */
__attribute__((target("avx2,f16c"), always_inline)) static inline void
f16_step(const uint8_t *src, uint8_t *dst, const f16_k *k, f16_acc *a, const int range) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)src);
    __m256i ax = _mm256_and_si256(x, k->absmask);
    __m256i sign = _mm256_andnot_si256(k->absmask, x);
    /* magnitudes are < 2^31, so signed compares order them */
    __m256i finite = _mm256_cmpgt_epi32(k->inf, ax);
    __m256i iszero = _mm256_cmpeq_epi32(ax, k->zero);
    __m256i fnz = _mm256_andnot_si256(iszero, finite);
    __m256i small = _mm256_and_si256(fnz, _mm256_cmpgt_epi32(k->vmin, ax));
    __m256i big = _mm256_and_si256(finite, _mm256_cmpgt_epi32(ax, k->vmax));
    if (range) {
        a->nz = _mm256_sub_epi32(a->nz, fnz);
        /* infinities and NaN are not below 2^-14: only zeros need taking out */
        a->lo =
            _mm256_sub_epi32(a->lo, _mm256_andnot_si256(iszero, _mm256_cmpgt_epi32(k->minn, ax)));
        a->hi = _mm256_sub_epi32(
            a->hi, k->hi_is_big ? big : _mm256_and_si256(finite, _mm256_cmpgt_epi32(ax, k->maxh)));
        a->mx = _mm256_max_epi32(a->mx, _mm256_and_si256(ax, finite));
    }
    __m256i ax2 = _mm256_blendv_epi8(ax, k->vmin, small);
    ax2 = _mm256_blendv_epi8(ax2, k->vmax, big);
    __m256 xf = _mm256_castsi256_ps(_mm256_or_si256(ax2, sign));
    __m128i h = _mm256_cvtps_ph(xf, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* masks to 16-bit lanes: each is 0 or -1, so signed packing keeps them */
    __m128i fin16 =
        _mm_packs_epi32(_mm256_castsi256_si128(finite), _mm256_extracti128_si256(finite, 1));
    __m128i fnz16 = _mm_packs_epi32(_mm256_castsi256_si128(fnz), _mm256_extracti128_si256(fnz, 1));
    __m128i sgn16 = _mm_andnot_si128(k->h_abs, h);
    __m128i hab = _mm_and_si128(h, k->h_abs);
    __m128i became0 = _mm_and_si128(fnz16, _mm_cmpeq_epi16(hab, k->h_zero));
    __m128i becameinf = _mm_and_si128(fin16, _mm_cmpeq_epi16(hab, k->h_inf));
    h = _mm_blendv_epi8(h, _mm_or_si128(sgn16, k->h_one), became0);
    h = _mm_blendv_epi8(h, _mm_or_si128(sgn16, k->h_max), becameinf);
    _mm_storeu_si128((__m128i *)(void *)dst, h);
    __m128i c16 = _mm_or_si128(
        _mm_packs_epi32(_mm256_castsi256_si128(big), _mm256_extracti128_si256(big, 1)), becameinf);
    a->clamped += (uint64_t)__builtin_popcount((unsigned)_mm_movemask_epi8(c16)) / 2;
}

/* FP16 conversion; with `r`, the range test of the same values in the same pass. Lane counts
 * are flushed every 2^20 steps, so they never overflow. */
__attribute__((target("avx2,f16c"))) static uint64_t
f16_avx2(const uint8_t *src, uint8_t *dst, size_t n, const msh_f16_bounds *b, msh_f16_range *r) {
    f16_k k;
    k.absmask = _mm256_set1_epi32(0x7FFFFFFF);
    k.inf = _mm256_set1_epi32(0x7F800000);
    k.vmin = _mm256_set1_epi32((int)b->min_abs);
    k.vmax = _mm256_set1_epi32((int)b->max_abs);
    k.zero = _mm256_setzero_si256();
    k.minn = _mm256_set1_epi32((int)MSH_F16_MIN_NORMAL_BITS);
    k.maxh = _mm256_set1_epi32((int)MSH_F16_MAX_BITS);
    k.h_abs = _mm_set1_epi16(0x7FFF);
    k.h_zero = _mm_setzero_si128();
    k.h_inf = _mm_set1_epi16(0x7C00);
    k.h_one = _mm_set1_epi16(1);
    k.h_max = _mm_set1_epi16(0x7BFF);
    k.hi_is_big = b->max_abs == MSH_F16_MAX_BITS;
    f16_acc a;
    a.clamped = 0;
    a.mx = k.zero;
    size_t i = 0;
    const size_t block = (size_t)8 << 20;
    while (i + 8 <= n) {
        size_t end = n - i > block ? i + block : n;
        a.nz = a.lo = a.hi = k.zero;
        if (r) {
            for (; i + 8 <= end; i += 8)
                f16_step(src + 4 * i, dst + 2 * i, &k, &a, 1);
            r->nonzero += hsum32(a.nz);
            r->below += hsum32(a.lo);
            r->above += hsum32(a.hi);
        } else {
            for (; i + 8 <= end; i += 8)
                f16_step(src + 4 * i, dst + 2 * i, &k, &a, 0);
        }
    }
    if (r) {
        uint32_t lanes[8];
        _mm256_storeu_si256((__m256i *)(void *)lanes, a.mx);
        for (int q = 0; q < 8; q++)
            if (lanes[q] > r->max_bits)
                r->max_bits = lanes[q];
        range_ref(src + 4 * i, n - i, r);
    }
    return a.clamped + msh_f32_to_f16_buf_ref(src + 4 * i, dst + 2 * i, n - i, b);
}

__attribute__((target("avx2"))) static void bf16_avx2(const uint8_t *src, uint8_t *dst, size_t n) {
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i inf = _mm256_set1_epi32(0x7F800000);
    const __m256i bias = _mm256_set1_epi32(0x7FFF);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i qnan = _mm256_set1_epi32(0x0040);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int k = 0; k < 2; k++) {
            __m256i x =
                _mm256_loadu_si256((const __m256i *)(const void *)(src + 4 * (i + 8 * (size_t)k)));
            __m256i isnan = _mm256_cmpgt_epi32(_mm256_and_si256(x, absmask), inf);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
            __m256i rounded =
                _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, bias), lsb), 16);
            __m256i nanv = _mm256_or_si256(_mm256_srli_epi32(x, 16), qnan);
            r[k] = _mm256_blendv_epi8(rounded, nanv, isnan);
        }
        /* pack 2 x 8 uint32 (all < 65536) to 16 uint16, undoing packus's lane interleave */
        __m256i p = _mm256_packus_epi32(r[0], r[1]);
        p = _mm256_permute4x64_epi64(p, 0xD8);
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2 * i), p);
    }
    msh_f32_to_bf16_buf_ref(src + 4 * i, dst + 2 * i, n - i);
}
#endif

#if defined(MSH_X86_SIMD)
static int g_simd;
static void simd_probe(void) {
    const char *force = getenv("MSH_FORCE_SCALAR");
    __builtin_cpu_init();
    /* F16C from CPUID leaf 1 directly: clang's __builtin_cpu_supports does not know "f16c". */
    unsigned a = 0, b = 0, c = 0, d = 0;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    g_simd =
        !(force && *force && strcmp(force, "0") != 0) && __builtin_cpu_supports("avx2") && f16c;
}
#endif

int msh_cpu_has_simd(void) {
#if defined(MSH_X86_SIMD)
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, simd_probe);
    return g_simd;
#else
    return 0;
#endif
}

uint64_t msh_f32_to_f16_buf_simd(const uint8_t *src, uint8_t *dst, size_t n,
                                 const msh_f16_bounds *b) {
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        return f16_avx2(src, dst, n, b, NULL);
#endif
    return msh_f32_to_f16_buf_ref(src, dst, n, b);
}

void msh_f32_to_bf16_buf_simd(const uint8_t *src, uint8_t *dst, size_t n) {
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd()) {
        bf16_avx2(src, dst, n);
        return;
    }
#endif
    msh_f32_to_bf16_buf_ref(src, dst, n);
}

uint64_t msh_f32_to_f16_buf(const uint8_t *src, uint8_t *dst, size_t n, const msh_f16_bounds *b) {
    return msh_f32_to_f16_buf_simd(src, dst, n, b);
}

void msh_f32_to_bf16_buf(const uint8_t *src, uint8_t *dst, size_t n) {
    msh_f32_to_bf16_buf_simd(src, dst, n);
}

uint64_t msh_f32_to_f16_range_buf(const uint8_t *src, uint8_t *dst, size_t n,
                                  const msh_f16_bounds *b, msh_f16_range *r) {
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        return f16_avx2(src, dst, n, b, r);
#endif
    range_ref(src, n, r);
    return msh_f32_to_f16_buf_ref(src, dst, n, b);
}

static void range_ref(const uint8_t *src, size_t n, msh_f16_range *r) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x = ld32(src + 4 * i);
        int c = msh_f16_range_class(x);
        if (c == 0)
            continue;
        r->nonzero++;
        r->below += c == 2;
        r->above += c == 3;
        uint32_t ax = x & 0x7FFFFFFFu;
        if (ax > r->max_bits)
            r->max_bits = ax;
    }
}

#if defined(MSH_X86_SIMD)
/* msh_f16_range_class on 8 lanes: magnitudes are < 2^31, so signed compares order them. */
__attribute__((target("avx2"))) static size_t range_avx2(const uint8_t *src, size_t n,
                                                         msh_f16_range *r) {
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i inf = _mm256_set1_epi32(0x7F800000);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i minn = _mm256_set1_epi32((int)MSH_F16_MIN_NORMAL_BITS);
    const __m256i maxh = _mm256_set1_epi32((int)MSH_F16_MAX_BITS);
    __m256i mx = zero;
    uint64_t nz = 0, below = 0, above = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i ax = _mm256_and_si256(
            _mm256_loadu_si256((const __m256i *)(const void *)(src + 4 * i)), absmask);
        __m256i finite_nz =
            _mm256_andnot_si256(_mm256_cmpeq_epi32(ax, zero), _mm256_cmpgt_epi32(inf, ax));
        __m256i lo = _mm256_and_si256(finite_nz, _mm256_cmpgt_epi32(minn, ax));
        __m256i hi = _mm256_and_si256(finite_nz, _mm256_cmpgt_epi32(ax, maxh));
        nz += (uint64_t)__builtin_popcount(
            (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(finite_nz)));
        below +=
            (uint64_t)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(lo)));
        above +=
            (uint64_t)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(hi)));
        mx = _mm256_max_epi32(mx, _mm256_and_si256(ax, finite_nz));
    }
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)(void *)lanes, mx);
    for (int k = 0; k < 8; k++)
        if (lanes[k] > r->max_bits)
            r->max_bits = lanes[k];
    r->nonzero += nz;
    r->below += below;
    r->above += above;
    return i;
}
#endif

void msh_f16_range_buf(const uint8_t *src, size_t n, msh_f16_range *r) {
    size_t done = 0;
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        done = range_avx2(src, n, r);
#endif
    range_ref(src + 4 * done, n - done, r);
}

static float ldf(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* Element i of the buffer sits at position `in` of channel `ch`; both advance without a
 * division per element (MatMul weights change channel at every element). */
#if defined(MSH_X86_SIMD)
/* max(m, |w|) over finite w on 8 lanes; maxima are order-free and m >= 0, so this equals the
 * scalar steps bit for bit. */
__attribute__((target("avx2"))) static inline __m256 absmax8(__m256 m, __m256 w) {
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), w);
    a = _mm256_and_ps(a, _mm256_cmp_ps(a, _mm256_set1_ps(3.4028234663852886e+38f), _CMP_LE_OQ));
    return _mm256_max_ps(m, a);
}

__attribute__((target("avx2"))) static float run_max_avx2(const uint8_t *src, size_t run, float m) {
    __m256 acc = _mm256_set1_ps(m);
    size_t k = 0;
    for (; k + 8 <= run; k += 8)
        acc = absmax8(acc, _mm256_loadu_ps((const float *)(const void *)(src + 4 * k)));
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; j < 8; j++)
        m = lanes[j] > m ? lanes[j] : m;
    for (; k < run; k++)
        m = msh_absmax_step(m, ldf(src + 4 * k));
    return m;
}

/* inner == 1 (MatMul weights): 8 consecutive channels at a time. Returns elements done. */
__attribute__((target("avx2"))) static size_t
absmax_rows_avx2(const uint8_t *src, size_t n, int64_t *ch, int64_t channels, float *absmax) {
    size_t i = 0;
    while (i + 8 <= n) {
        if (*ch + 8 > channels) {
            absmax[*ch] = msh_absmax_step(absmax[*ch], ldf(src + 4 * i));
            i++;
            if (++*ch == channels)
                *ch = 0;
            continue;
        }
        __m256 m = _mm256_loadu_ps(absmax + *ch);
        m = absmax8(m, _mm256_loadu_ps((const float *)(const void *)(src + 4 * i)));
        _mm256_storeu_ps(absmax + *ch, m);
        i += 8;
        *ch += 8;
        if (*ch == channels)
            *ch = 0;
    }
    return i;
}
#endif

void msh_int8_absmax(const uint8_t *src, size_t n, int64_t first, int64_t inner, int64_t channels,
                     float *absmax) {
    int64_t ch = (first / inner) % channels, in = first % inner;
    size_t i = 0;
#if defined(MSH_X86_SIMD)
    int simd = msh_cpu_has_simd();
    if (simd && inner == 1)
        i = absmax_rows_avx2(src, n, &ch, channels, absmax);
#endif
    while (i < n) {
        size_t run = (size_t)(inner - in);
        if (run > n - i)
            run = n - i;
        float m = absmax[ch]; /* kept in a register along the run */
#if defined(MSH_X86_SIMD)
        if (simd && run >= 16)
            m = run_max_avx2(src + 4 * i, run, m);
        else
#endif
            for (size_t k = 0; k < run; k++)
                m = msh_absmax_step(m, ldf(src + 4 * (i + k)));
        absmax[ch] = m;
        i += run;
        in += (int64_t)run;
        if (in == inner) {
            in = 0;
            if (++ch == channels)
                ch = 0;
        }
    }
}

static void quantize_ref(const uint8_t *src, uint8_t *dst, size_t n, int64_t *ch, int64_t *in,
                         int64_t inner, int64_t channels, const float *scales) {
    for (size_t i = 0; i < n; i++) {
        dst[i] = (uint8_t)msh_int8_quant_ref(ldf(src + 4 * i), scales[*ch]);
        if (++*in == inner) {
            *in = 0;
            if (++*ch == channels)
                *ch = 0;
        }
    }
}

#if defined(MSH_X86_SIMD)
/* msh_int8_quant_ref on 8 lanes: the same IEEE division and the same add/subtract rounding, so
 * the same bytes; clamping after rounding gives what clamping before does. */
__attribute__((target("avx2"))) static size_t quantize_avx2(const uint8_t *src, uint8_t *dst,
                                                            size_t n, int64_t *ch, int64_t *in,
                                                            int64_t inner, int64_t channels,
                                                            const float *scales) {
    const __m256 magic = _mm256_set1_ps(12582912.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 scv;
        if (inner == 1 && *ch + 8 <= channels) {
            scv = _mm256_loadu_ps(scales + *ch); /* 8 consecutive channels (MatMul B) */
            *ch += 8;
            if (*ch == channels)
                *ch = 0;
        } else if (inner - *in >= 8) {
            scv = _mm256_set1_ps(scales[*ch]); /* 8 elements of one channel (Conv W) */
            *in += 8;
            if (*in == inner) {
                *in = 0;
                if (++*ch == channels)
                    *ch = 0;
            }
        } else {
            float sc[8];
            for (int k = 0; k < 8; k++) {
                sc[k] = scales[*ch];
                if (++*in == inner) {
                    *in = 0;
                    if (++*ch == channels)
                        *ch = 0;
                }
            }
            scv = _mm256_loadu_ps(sc);
        }
        __m256 w = _mm256_loadu_ps((const float *)(const void *)(src + 4 * i));
        __m256 x = _mm256_div_ps(w, scv);
        __m256 ax = _mm256_andnot_ps(sign, x);
        __m256 r = _mm256_sub_ps(_mm256_add_ps(ax, magic), magic);
        r = _mm256_or_ps(r, _mm256_and_ps(x, sign));
        r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        r = _mm256_and_ps(r, _mm256_cmp_ps(w, w, _CMP_ORD_Q)); /* NaN -> 0 */
        __m256i q = _mm256_cvttps_epi32(r);
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        __m128i q8 = _mm_packs_epi16(q16, q16);
        _mm_storel_epi64((__m128i *)(void *)(dst + i), q8);
    }
    return i;
}
#endif

void msh_int8_quantize(const uint8_t *src, uint8_t *dst, size_t n, int64_t first, int64_t inner,
                       int64_t channels, const float *scales) {
    int64_t ch = (first / inner) % channels, in = first % inner;
    size_t done = 0;
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        done = quantize_avx2(src, dst, n, &ch, &in, inner, channels, scales);
#endif
    quantize_ref(src + 4 * done, dst + done, n - done, &ch, &in, inner, channels, scales);
}

#if defined(MSH_X86_SIMD)
/* msh_int4_stats_step over the first values of a run, 8 lanes at a time, from lo = hi = 0: a
 * non-finite value becomes 0, which changes neither bound, and min_ps(w, lo) keeps lo unless
 * w < lo, so lo is +0 or the least negative value and hi +0 or the largest positive one, as the
 * scalar steps give them. Returns the values done (a multiple of 8). */
__attribute__((target("avx2"))) static int64_t run_minmax_avx2(const float *w, int64_t run,
                                                               float *lo, float *hi) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.4028234663852886e+38f);
    __m256 l = _mm256_setzero_ps(), h = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= run; t += 8) {
        __m256 x = _mm256_loadu_ps(w + t);
        x = _mm256_and_ps(x, _mm256_cmp_ps(_mm256_andnot_ps(sign, x), big, _CMP_LE_OQ));
        l = _mm256_min_ps(x, l);
        h = _mm256_max_ps(x, h);
    }
    float ll[8], hh[8];
    _mm256_storeu_ps(ll, l);
    _mm256_storeu_ps(hh, h);
    for (int j = 0; j < 8; j++) {
        *lo = ll[j] < *lo ? ll[j] : *lo;
        *hi = hh[j] > *hi ? hh[j] : *hi;
    }
    return t;
}
#endif

int64_t msh_int4_stats(const uint8_t *src, size_t n, int64_t first, int64_t cols, int64_t block,
                       float *out) {
    if (n == 0)
        return 0;
    int64_t b0 = msh_int4_block_of(first, cols, block, 1);
    int64_t nb = msh_int4_block_of(first + (int64_t)n - 1, cols, block, 1) - b0 + 1;
    for (int64_t k = 0; k < 2 * nb; k++)
        out[k] = 0.0f;
    /* walk the values block by block: a block ends at a multiple of `block` in its row, or at the
     * row's end */
    int64_t i = 0, col = first % cols, k = 0;
    while (i < (int64_t)n) {
        int64_t end = (col / block + 1) * block;
        if (end > cols)
            end = cols;
        int64_t run = end - col;
        if (run > (int64_t)n - i)
            run = (int64_t)n - i;
        float lo = 0.0f, hi = 0.0f;
        int64_t t = 0;
#if defined(MSH_X86_SIMD)
        if (run >= 8 && msh_cpu_has_simd())
            t = run_minmax_avx2((const float *)(const void *)(src + 4 * i), run, &lo, &hi);
#endif
        for (; t < run; t++)
            msh_int4_stats_step(&lo, &hi, ldf(src + 4 * (i + t)));
        out[2 * k] = lo;
        out[2 * k + 1] = hi;
        i += run;
        col += run;
        if (col == cols)
            col = 0;
        k++;
    }
    return nb;
}

/* Column minima and maxima of `nrows` rows of `cols` floats: lo[c] = min(lo[c], w), hi[c] =
 * max(hi[c], w) over the finite values of column c, in msh_int4_stats_step's comparisons (a
 * value that compares equal keeps the old one), so every path gives the same bits. */
static void colstats_ref(const float *w, int64_t nrows, int64_t cols, int64_t c0, float *lo,
                         float *hi) {
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = c0; c < cols; c++)
            msh_int4_stats_step(&lo[c], &hi[c], w[r * cols + c]);
}

#if defined(MSH_X86_SIMD)
/* colstats_ref on 8 columns at a time: a non-finite value becomes 0, which changes neither
 * bound (lo <= 0 <= hi from the start); min_ps(w, lo) keeps lo unless w < lo, as the scalar
 * step. Returns the columns done (a multiple of 8). */
__attribute__((target("avx2"))) static int64_t colstats_avx2(const float *w, int64_t nrows,
                                                             int64_t cols, float *lo, float *hi) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.4028234663852886e+38f);
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 l = _mm256_loadu_ps(lo + c), h = _mm256_loadu_ps(hi + c);
        for (int64_t r = 0; r < nrows; r++) {
            __m256 x = _mm256_loadu_ps(w + r * cols + c);
            x = _mm256_and_ps(x, _mm256_cmp_ps(_mm256_andnot_ps(sign, x), big, _CMP_LE_OQ));
            l = _mm256_min_ps(x, l);
            h = _mm256_max_ps(x, h);
        }
        _mm256_storeu_ps(lo + c, l);
        _mm256_storeu_ps(hi + c, h);
    }
    return c;
}
#endif

void msh_int4_colstats(const float *w, int64_t nrows, int64_t cols, float *lo, float *hi) {
    int64_t done = 0;
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        done = colstats_avx2(w, nrows, cols, lo, hi);
#endif
    colstats_ref(w, nrows, cols, done, lo, hi);
}

/* The nibbles of a run of n values that share one scale (and zero point) when `step` is 0, or
 * take consecutive ones (scales[i], zps[i]) when it is 1 (blocks along the columns). */
static void q4_run_ref(const uint8_t *src, uint8_t *nib, size_t n, const float *sc,
                       const uint8_t *zp, int step, const msh_int4_layout *l) {
    for (size_t i = 0; i < n; i++) {
        size_t b = step ? i : 0;
        nib[i] =
            msh_int4_nibble_ref(ldf(src + 4 * i), sc[b], l->asym, l->asym ? zp[b] : 0, l->offset);
    }
}

#if defined(MSH_X86_SIMD)
/* q4_run_ref on 8 lanes: the same IEEE division and add/subtract rounding; clamping after
 * rounding gives what clamping before does, NaN lanes become 0 before the zero point or offset
 * is added, as in msh_int4_nibble_ref. Returns the values done (a multiple of 8). */
__attribute__((target("avx2"))) static size_t q4_run_avx2(const uint8_t *src, uint8_t *nib,
                                                          size_t n, const float *sc,
                                                          const uint8_t *zp, int step,
                                                          const msh_int4_layout *l) {
    const __m256 magic = _mm256_set1_ps(12582912.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256 lo = _mm256_set1_ps(l->asym ? -16.0f : -8.0f);
    const __m256 hi = _mm256_set1_ps(l->asym ? 16.0f : 7.0f);
    const __m256i zero = _mm256_setzero_si256(), fifteen = _mm256_set1_epi32(15);
    __m256 scv = _mm256_set1_ps(sc[0]);
    __m256i add = _mm256_set1_epi32(l->asym ? zp[0] : l->offset);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        if (step) {
            scv = _mm256_loadu_ps(sc + i);
            if (l->asym)
                add =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(zp + i)));
        }
        __m256 w = _mm256_loadu_ps((const float *)(const void *)(src + 4 * i));
        __m256 x = _mm256_div_ps(w, scv);
        __m256 ax = _mm256_andnot_ps(sign, x);
        __m256 r = _mm256_sub_ps(_mm256_add_ps(ax, magic), magic);
        r = _mm256_or_ps(r, _mm256_and_ps(x, sign));
        r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        r = _mm256_and_ps(r, _mm256_cmp_ps(w, w, _CMP_ORD_Q)); /* NaN -> 0 */
        __m256i q = _mm256_add_epi32(_mm256_cvttps_epi32(r), add);
        if (l->asym)
            q = _mm256_min_epi32(_mm256_max_epi32(q, zero), fifteen);
        else
            q = _mm256_and_si256(q, fifteen);
        __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(void *)(nib + i), _mm_packus_epi16(q16, q16));
    }
    return i;
}
#endif

static void q4_run(const uint8_t *src, uint8_t *nib, size_t n, const float *sc, const uint8_t *zp,
                   int step, const msh_int4_layout *l) {
    size_t done = 0;
#if defined(MSH_X86_SIMD)
    if (n >= 8 && msh_cpu_has_simd())
        done = q4_run_avx2(src, nib, n, sc, zp, step, l);
#endif
    if (done < n)
        q4_run_ref(src + 4 * done, nib + done, n - done, step ? sc + done : sc,
                   step && l->asym ? zp + done : zp, step, l);
}

void msh_int4_quantize(const uint8_t *src, uint8_t *dst, size_t n, int64_t first,
                       const msh_int4_layout *l) {
    /* runs of values that share a scale (axis 1: a block's part of a row) or take consecutive
     * scales (axis 0: a row's part), their nibbles gathered in `nib`, then packed two per byte;
     * equal to msh_int4_nibble_ref at msh_int4_block_of(first + i, ...) for every i
     * (tests/unit/test_int4.c) */
    enum { NIB = 4096 };
    uint8_t nib[NIB];
    const int64_t cols = l->cols, B = l->block;
    int64_t r = first / cols, c = first - r * cols;
    size_t i = 0;
    while (i < n) {
        size_t base = i, k = 0;
        while (k < NIB && i < n) {
            int64_t end = l->axis == 1 ? (c / B + 1) * B : cols;
            if (end > cols)
                end = cols;
            size_t run = (size_t)(end - c);
            if (run > n - i)
                run = n - i;
            if (run > NIB - k)
                run = NIB - k;
            int64_t b = msh_int4_block_of(r * cols + c, cols, B, l->axis);
            q4_run(src + 4 * i, nib + k, run, l->scales + b, l->asym ? l->zps + b : NULL,
                   l->axis == 0, l);
            i += run;
            k += run;
            c += (int64_t)run;
            if (c == cols) {
                c = 0;
                r++;
            }
        }
        /* `base` is even (NIB is even, and a piece starts at an even element) */
        uint8_t *d = dst + base / 2;
        for (size_t t = 0; t + 1 < k; t += 2)
            d[t / 2] = (uint8_t)(nib[t] | (nib[t + 1] << 4));
        if (k & 1u)
            d[k / 2] = nib[k - 1];
    }
}

#if defined(MSH_X86_SIMD)
/* One candidate vector's error term per value on 8 lanes (lanes = candidates, x broadcast): the
 * IEEE operations of msh_int4_search_term in its order. x / d, then rne (round-half-even, as
 * msh_rne_f32), clamped after rounding, which gives what msh_int4_round_clamp's clamping before
 * does (the bounds are integers and rne is monotone). Symmetric, q in [-8, 7] is the nibble's
 * signed value (the two's complement round trip of msh_int4_nibble_ref is the identity there);
 * asymmetric, q + z clamped to [0, 15] (the clamp to [-16, 16] first changes nothing: z is in
 * [0, 15], and r + z rounds only when |r| >= 2^24), then (q - z) (exact, small integers) times d.
 * x is finite here, so a NaN quotient means 0 / 0 (a d that a BF16 store rounded to 0): max
 * returns its second operand, a bound, for it, and any finite q times d = 0 is +-0, as the
 * scalar's q = 0 gives. A +-0 where the scalar has another zero's sign gives the same t * t:
 * deq is then +-0 (or NaN for both when d is inf), so t is x, or +-0 when x is. */
__attribute__((target("avx2"), always_inline)) static inline __m256
search_term8(__m256 x, __m256 d, __m256 z, const int asym) {
    __m256 y = _mm256_div_ps(x, d);
    __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 deq;
    if (asym) {
        __m256 q = _mm256_add_ps(r, z);
        q = _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), _mm256_set1_ps(15.0f));
        deq = _mm256_mul_ps(_mm256_sub_ps(q, z), d);
    } else {
        __m256 q = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
        deq = _mm256_mul_ps(q, d);
    }
    __m256 t = _mm256_sub_ps(x, deq);
    return _mm256_mul_ps(t, t);
}

/* The errors of 24 candidates (20 and 4 unused lanes) over the m finite values f, each summed
 * in element order: e = e + t * t per lane, as msh_int4_search_error. */
__attribute__((target("avx2"), always_inline)) static inline void
search_sums8(const float *f, int64_t m, const float *cd, const float *cz, float *ce,
             const int asym) {
    const __m256 d0 = _mm256_loadu_ps(cd), d1 = _mm256_loadu_ps(cd + 8),
                 d2 = _mm256_loadu_ps(cd + 16);
    const __m256 z0 = _mm256_loadu_ps(cz), z1 = _mm256_loadu_ps(cz + 8),
                 z2 = _mm256_loadu_ps(cz + 16);
    __m256 e0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps(), e2 = _mm256_setzero_ps();
    for (int64_t k = 0; k < m; k++) {
        __m256 x = _mm256_set1_ps(f[k]);
        e0 = _mm256_add_ps(e0, search_term8(x, d0, z0, asym));
        e1 = _mm256_add_ps(e1, search_term8(x, d1, z1, asym));
        e2 = _mm256_add_ps(e2, search_term8(x, d2, z2, asym));
    }
    _mm256_storeu_ps(ce, e0);
    _mm256_storeu_ps(ce + 8, e1);
    _mm256_storeu_ps(ce + 16, e2);
}

/* msh_int4_search_ref on 8 candidates per vector: the same stats, candidates (scalar) and
 * choice; the NaN and +-inf values, whose term is +0, are left out of the sums beforehand
 * (e + +0 is e: e is never -0, as it starts at +0 and adds squares or NaN), so the lanes see the
 * finite values in element order. The same bits as the reference, the candidates' errors too
 * (written to err[0 .. 19] unless err is NULL; tests/unit/test_int4_search_simd.c). n <= 128. */
__attribute__((target("avx2"))) static int search_block_avx2(const float *w, int64_t n, int asym,
                                                             int store, float *lo_out,
                                                             float *hi_out, float *err) {
    enum { L = 24 };
    float f[128], lo = 0.0f, hi = 0.0f;
    int64_t m = 0;
    for (int64_t k = 0; k < n; k++) {
        float x = w[k], a = x < 0.0f ? -x : x;
        msh_int4_stats_step(&lo, &hi, x);
        if (a <= 3.4028234663852886e+38f)
            f[m++] = x;
    }
    float cl[L], ch[L], cd[L], cz[L], ce[L];
    for (int i = 0; i < L; i++) {
        int z = 0;
        if (i < MSH_INT4_SEARCH_STEPS)
            msh_int4_search_candidate(lo, hi, i, asym, store, &cl[i], &ch[i], &cd[i], &z);
        else
            cd[i] = 1.0f; /* unused lanes */
        cz[i] = (float)z;
    }
    if (asym) /* two copies, the branch out of the loop */
        search_sums8(f, m, cd, cz, ce, 1);
    else
        search_sums8(f, m, cd, cz, ce, 0);
    int best = 0;
    for (int i = 1; i < MSH_INT4_SEARCH_STEPS; i++)
        if (msh_int4_search_better(ce[i], i, ce[best], best))
            best = i;
    if (err)
        memcpy(err, ce, sizeof(float) * MSH_INT4_SEARCH_STEPS);
    *lo_out = cl[best];
    *hi_out = ch[best];
    return best;
}
#endif

int64_t msh_int4_search(const uint8_t *src, size_t n, int64_t first, int64_t cols, int64_t block,
                        int asym, int store, float *out) {
    float w[128 + 1];
    int64_t nb = 0;
#if defined(MSH_X86_SIMD)
    const int simd = msh_cpu_has_simd();
#endif
    for (size_t i = 0; i < n;) {
        int64_t c = (first + (int64_t)i) % cols;
        int64_t len = block - c % block;
        if (len > cols - c)
            len = cols - c;
        if (len > (int64_t)(n - i))
            len = (int64_t)(n - i);
        if (len > 128) /* blocks are 32, 64 or 128 values */
            len = 128;
        for (int64_t k = 0; k < len; k++)
            w[k] = ldf(src + 4 * (i + (size_t)k));
#if defined(MSH_X86_SIMD)
        if (simd)
            search_block_avx2(w, len, asym, store, &out[2 * nb], &out[2 * nb + 1], NULL);
        else
#endif
            msh_int4_search_ref(w, len, asym, store, &out[2 * nb], &out[2 * nb + 1]);
        nb++;
        i += (size_t)len;
    }
    return nb;
}

int msh_int4_search_block_test(const float *w, int64_t n, int asym, int store, float *lo_out,
                               float *hi_out, float *err) {
#if defined(MSH_X86_SIMD)
    if (msh_cpu_has_simd())
        return search_block_avx2(w, n, asym, store, lo_out, hi_out, err);
#endif
    float lo = 0.0f, hi = 0.0f, l, h, d;
    int z;
    for (int64_t k = 0; k < n; k++)
        msh_int4_stats_step(&lo, &hi, w[k]);
    for (int i = 0; i < MSH_INT4_SEARCH_STEPS; i++) {
        msh_int4_search_candidate(lo, hi, i, asym, store, &l, &h, &d, &z);
        err[i] = msh_int4_search_error(w, n, d, asym, z);
    }
    return msh_int4_search_ref(w, n, asym, store, lo_out, hi_out);
}
