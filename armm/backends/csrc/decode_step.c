/* One KV-cached decode step of armm's Transformer on the CPU, float32: every weight is read once, in place.
 *
 * A batch-1 decode step is bound by memory bandwidth: it multiplies one row by every weight matrix. In PyTorch
 * the step is ~150 operator calls, each with its own dispatch, and its matrix-vector kernels read weights below
 * the memory's speed. Here the whole step -- embeddings, norms, projections, rotary embeddings, the cache
 * write, attention, the MLP (its activation fused into its first layer) and the output layer -- runs inside one
 * OpenMP parallel region; each weight row is streamed once against the batch's rows, and each output is summed
 * by one thread in a fixed order, so results do not depend on the thread count. Matrices can also be read as
 * weight-only int8 copies (a quarter of the bytes). armm/backends/library.py builds this file on first use and
 * armm/backends/native.py calls armm_forward through ctypes, after checking every argument; wherever it cannot
 * run, decoding runs in PyTorch (tests compare both). Measurements behind each choice: docs/performance.md.
 *
 * Layout conventions are those of armm/model.py: fused qkv = [q heads | k heads | v heads], SwiGLU's fc =
 * [gate | up], rotary embeddings in the half-rotation layout, the cache [batch, n_kv_head, max_len, head_dim]. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define PREFETCH_BYTES (16 * 1024)  /* how far ahead of the multiply-adds weight rows are requested */

typedef struct {
    const float *norm_1_weight, *norm_1_bias;   /* bias NULL for RMSNorm or bias=False */
    const float *qkv_weight, *qkv_bias;
    const float *attn_proj_weight, *attn_proj_bias;
    const float *norm_2_weight, *norm_2_bias;
    const float *fc_weight, *fc_bias;
    const float *mlp_proj_weight, *mlp_proj_bias;
    float *k_cache, *v_cache;                   /* [batch, n_kv_head, cache_len, head_dim] */
    /* weight-only int8 copies of the four matrices ([out, in], symmetric per output row: w = q * scale[out]),
     * read instead of the float32 weights when not NULL */
    const int8_t *qkv_q, *attn_proj_q, *fc_q, *mlp_proj_q;
    const float *qkv_scale, *attn_proj_scale, *fc_scale, *mlp_proj_scale;
} Layer;

typedef struct {
    int32_t n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab_size, cache_len, max_seq_len;
    int32_t rmsnorm, swiglu, num_streams;       /* num_streams K: ids a position (embeddings summed) */
    float norm_eps;
    const float *tok_emb, *pos_emb;             /* pos_emb NULL with rotary embeddings */
    const float *rope_cos, *rope_sin;           /* [max_seq_len, head_dim], NULL with learned positions */
    const float *norm_f_weight, *norm_f_bias, *lm_head_weight;
    const int8_t *lm_head_q;                    /* int8 copy of the output layer, or NULL */
    const float *lm_head_scale;
    const Layer *layers;
    const float *rope_inv_freq;                 /* [head_dim / 2]: RoPE angles past the tables (a rolling cache) */
} Model;

/* One weight matrix [out, in]: float32, or int8 with a float32 scale per output row when q is not NULL. */
typedef struct { const float *w; const int8_t *q; const float *scale; } Matrix;

/* VLEN floats, loaded from and stored to any float address (GCC/Clang vector extensions): one register where the
 * CPU has 512-bit vectors, two 256-bit ones elsewhere. A vector type wider than that (16 floats on an AVX2-only CPU)
 * is not split into registers cleanly: GCC moves it through the stack, and the four-row kernel below was then
 * slower per row than one row at a time. */
#if defined(__AVX512F__)
#define VLEN 16
#else
#define VLEN 8
#endif
typedef float vecf __attribute__((vector_size(VLEN * 4), aligned(4), may_alias));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));

/* The sum of the VLEN lanes, as a tree: halves added to halves. */
static inline float hsum(vecf v) {
#if VLEN == 16
    union { vecf whole; f32x8 half[2]; } a = {v};
    const f32x8 h = a.half[0] + a.half[1];
#else
    const f32x8 h = v;
#endif
    union { f32x8 whole; f32x4 half[2]; } b = {h};
    f32x4 g = b.half[0] + b.half[1];
    return (g[0] + g[2]) + (g[1] + g[3]);
}

static inline float dot(const float *w, const float *x, int n) {
    float s = 0.f;
    #pragma omp simd reduction(+:s)
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

/* x[k] . w for four rows x[k] at once: four independent sums, so several tokens per row (a speculative check, a
 * short prefill) are not bound by the latency of one chain of additions. */
static inline void dot4(const float *w, const float *const x[4], int n, float *out) {
    const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    int i = 0;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    if (n >= VLEN) {
        vecf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; i + VLEN <= n; i += VLEN) {
            const vecf wv = *(const vecf *)(w + i);
            a0 += wv * *(const vecf *)(x0 + i);
            a1 += wv * *(const vecf *)(x1 + i);
            a2 += wv * *(const vecf *)(x2 + i);
            a3 += wv * *(const vecf *)(x3 + i);
        }
        s0 = hsum(a0); s1 = hsum(a1); s2 = hsum(a2); s3 = hsum(a3);
    }
    for (; i < n; i++) {
        s0 += w[i] * x0[i]; s1 += w[i] * x1[i]; s2 += w[i] * x2[i]; s3 += w[i] * x3[i];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* (q . x) for an int8 weight row q; the caller multiplies by the row's scale. 64 running sums (four vector
 * registers): with a quarter of float32's bytes to read, one chain of multiply-adds would bound the step. */
static inline float dot_q(const int8_t *q, const float *x, int n) {
    float acc[64] = {0}, s = 0.f;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        #pragma omp simd
        for (int k = 0; k < 64; k++) acc[k] += (float)q[i + k] * x[i + k];
    }
    #pragma omp simd reduction(+:s)
    for (int k = 0; k < 64; k++) s += acc[k];
    for (; i < n; i++) s += (float)q[i] * x[i];
    return s;
}

/* (q . x[k]) for four rows x[k] at once, each int8 weight converted once for all four */
static inline void dot_q4(const int8_t *q, const float *const x[4], int n, float *out) {
    const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    #pragma omp simd reduction(+:s0, s1, s2, s3)
    for (int i = 0; i < n; i++) {
        float w = (float)q[i];
        s0 += w * x0[i]; s1 += w * x1[i]; s2 += w * x2[i]; s3 += w * x3[i];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* Row o of a matrix against x: w[o] . x, the int8 copy's when there is one. */
static inline float row_dot(Matrix W, int o, const float *x, int n) {
    return W.q ? dot_q(W.q + (size_t)o * n, x, n) * W.scale[o] : dot(W.w + (size_t)o * n, x, n);
}

/* Row o of a matrix against four rows x[k]. */
static inline void row_dot4(Matrix W, int o, const float *const x[4], int n, float *out) {
    if (!W.q) {
        dot4(W.w + (size_t)o * n, x, n, out);
        return;
    }
    dot_q4(W.q + (size_t)o * n, x, n, out);
    for (int k = 0; k < 4; k++) out[k] *= W.scale[o];
}

/* w[o] . x[k] for the n <= 4 consecutive rows x[k] (each `in` long) into out[0 .. n-1] (out holds 4). Two or
 * three rows go through the four-row kernel too, the last row standing in for the missing ones: one pass over the
 * weight row, and no chain of additions longer than a single row's. */
static inline void row_dots(Matrix W, int o, const float *x, int n, int in, float *out) {
    if (n == 1) {
        out[0] = row_dot(W, o, x, in);
        return;
    }
    const float *const rows[4] = {x, x + (size_t)in, x + (size_t)(n > 2 ? 2 : n - 1) * in,
                                  x + (size_t)(n > 3 ? 3 : n - 1) * in};
    row_dot4(W, o, rows, in, out);
}

/* Request row o of W (`ahead` rows before it is multiplied) into the cache without keeping it there: the hardware
 * prefetcher alone does not keep enough reads in flight to use the memory's full speed. */
static inline void prefetch_row(Matrix W, int o, int in, int rows) {
    if (o >= rows) return;
    const char *row = W.q ? (const char *)(W.q + (size_t)o * in) : (const char *)(W.w + (size_t)o * in);
    size_t bytes = W.q ? (size_t)in : (size_t)in * 4;
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(row + i, 0, 0);
}

/* How many rows make PREFETCH_BYTES of W (at least one). */
static inline int rows_ahead(Matrix W, int in) {
    int row_bytes = W.q ? in : 4 * in;
    int n = (PREFETCH_BYTES + row_bytes - 1) / row_bytes;
    return n < 1 ? 1 : n;
}

/* y[b, o] (+)= x[b, :] . W[o, :] + bias[o] for b < B; each weight row is read once for all B rows. */
static void linear(const float *x, int B, int in, Matrix W, const float *bias, int out, float *y, int accumulate) {
    const int ahead = rows_ahead(W, in);
    #pragma omp for schedule(static)
    for (int o = 0; o < out; o++) {
        prefetch_row(W, o + ahead, in, out);
        float s[4];
        for (int b = 0; b < B; b += 4) {
            const int n = B - b < 4 ? B - b : 4;
            row_dots(W, o, x + (size_t)b * in, n, in, s);
            for (int k = 0; k < n; k++) {
                float v = s[k] + (bias ? bias[o] : 0.f);
                float *dst = y + (size_t)(b + k) * out + o;
                *dst = accumulate ? *dst + v : v;
            }
        }
    }
}

/* The MLP's first layer and its activation, y [B, d_ff]: GELU (tanh approximation, as v * sigmoid(2u)) of each
 * output, or SwiGLU, silu(gate) * up, from the pair of rows o (gate) and d_ff + o (up) of the fused weight. */
static void mlp_in(const Model *m, const float *x, int B, Matrix W, const float *bias, float *y) {
    const int d = m->d_model, f = m->d_ff;
    const int ahead = rows_ahead(W, d);
    #pragma omp for schedule(static)
    for (int o = 0; o < f; o++) {
        prefetch_row(W, o + ahead, d, f);
        if (m->swiglu) prefetch_row(W, f + o + ahead, d, 2 * f);
        float gate[4], up[4];
        for (int b = 0; b < B; b += 4) {
            const int n = B - b < 4 ? B - b : 4;
            row_dots(W, o, x + (size_t)b * d, n, d, gate);
            if (m->swiglu) row_dots(W, f + o, x + (size_t)b * d, n, d, up);
            for (int k = 0; k < n; k++) {
                const float v = gate[k] + (bias ? bias[o] : 0.f);
                y[(size_t)(b + k) * f + o] = m->swiglu
                    ? v / (1.f + expf(-v)) * (up[k] + (bias ? bias[f + o] : 0.f))
                    : v / (1.f + expf(-1.5957691216057308f * (v + 0.044715f * v * v * v)));
            }
        }
    }
}

/* LayerNorm (with optional bias) or RMSNorm of each of the B rows of x into y. */
static void norm(const Model *m, const float *x, int B, const float *weight, const float *bias, float *y) {
    int d = m->d_model;
    #pragma omp for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * d;
        float *yb = y + (size_t)b * d;
        float mean = 0.f, var = 0.f;
        if (!m->rmsnorm) {
            for (int i = 0; i < d; i++) mean += xb[i];
            mean /= d;
        }
        for (int i = 0; i < d; i++) var += (xb[i] - mean) * (xb[i] - mean);
        float inv = 1.f / sqrtf(var / d + m->norm_eps);
        for (int i = 0; i < d; i++) yb[i] = (xb[i] - mean) * inv * weight[i] + (bias ? bias[i] : 0.f);
    }
}

/* Rotate one head vector (half-rotation layout) by the angles of position pos: from the tables, or past them (a
 * rolling cache) computed as the tables are, angle = (float)pos * inv_freq. */
static void rope(const Model *m, float *v, int pos) {
    int hd = m->head_dim, half = hd / 2;
    if (pos >= m->max_seq_len) {
        for (int i = 0; i < half; i++) {
            float angle = (float)pos * m->rope_inv_freq[i], c = cosf(angle), s = sinf(angle);
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * c - x2 * s;
            v[i + half] = x2 * c + x1 * s;
        }
        return;
    }
    const float *c = m->rope_cos + (size_t)pos * hd, *s = m->rope_sin + (size_t)pos * hd;
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
    }
}

/* exp(x) for x <= 0 in a form the compiler vectorises: 2^(x log2 e) = 2^n 2^f with n = round, |f| <= 1/2, 2^f by
 * a degree-6 polynomial (relative error about 2e-7); inputs below -87 give about 1e-38, not 0. */
static inline float exp_nonpositive(float x) {
    float t = (x < -87.f ? -87.f : x) * 1.4426950408889634f;
    float n = (t + 12582912.f) - 12582912.f, f = t - n;  /* round to nearest (1.5 * 2^23 shifts the fraction out) */
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.f;
    union { float f; int32_t i; } u = {.f = p};
    u.i += (int32_t)n << 23;
    return u.f;
}

/* softmax over the scores s[first .. last] (made exp(s - max) in place); returns their sum */
static inline float softmax_numerators(float *restrict s, int first, int last) {
    float top = -INFINITY, total = 0.f;
    #pragma omp simd reduction(max:top)
    for (int u = first; u <= last; u++) top = s[u] > top ? s[u] : top;
    #pragma omp simd reduction(+:total)
    for (int u = first; u <= last; u++) total += (s[u] = exp_nonpositive(s[u] - top));
    return total;
}

/* softmax_numerators with the slots hole .. hole_end (none when hole > hole_end) left out: their numerators are 0 */
static inline float softmax_numerators_around(float *restrict s, int first, int last, int hole, int hole_end) {
    if (hole > hole_end) return softmax_numerators(s, first, last);
    for (int u = hole; u <= hole_end; u++) s[u] = -INFINITY;  /* below every real score: never the max */
    float total = softmax_numerators(s, first, last);
    for (int u = hole; u <= hole_end; u++) {
        total -= s[u];  /* exp_nonpositive's floor, about 1e-38 */
        s[u] = 0.f;
    }
    return total;
}

/* attend() for a head size HD that is a multiple of 16 (at most 128), known at compile time: q (pre-scaled) and
 * the accumulators stay in registers, each score takes two independent chains of multiply-adds, and the values
 * are summed two keys at a time into two sets of accumulators (about 3x faster a key than the plain loop). */
static inline __attribute__((always_inline)) void attend_fixed(const int HD, const float *restrict q,
        const float *restrict K, const float *restrict V, int first, int last, int hole, int hole_end, float scale,
        float *restrict s, float *restrict y) {
    const int n = HD / VLEN;
    vecf qs[128 / VLEN], acc[128 / VLEN], acc2[128 / VLEN];
    for (int k = 0; k < n; k++) qs[k] = *(const vecf *)(q + VLEN * k) * scale;
    for (int t = first; t <= last; t++) {
        const float *key = K + (size_t)t * HD;
        vecf a = qs[0] * *(const vecf *)key, b = {0};
        for (int k = 1; k < n; k++) {
            if (k % 2) b += qs[k] * *(const vecf *)(key + VLEN * k);
            else a += qs[k] * *(const vecf *)(key + VLEN * k);
        }
        s[t] = hsum(a + b);
    }
    const float total = softmax_numerators_around(s, first, last, hole, hole_end);
    for (int k = 0; k < n; k++) acc[k] = acc2[k] = (vecf){0};
    int t = first;
    for (; t < last; t += 2) {
        const float w = s[t], w2 = s[t + 1], *v = V + (size_t)t * HD;
        for (int k = 0; k < n; k++) {
            acc[k] += w * *(const vecf *)(v + VLEN * k);
            acc2[k] += w2 * *(const vecf *)(v + HD + VLEN * k);
        }
    }
    if (t == last)
        for (int k = 0; k < n; k++) acc[k] += s[t] * *(const vecf *)(V + (size_t)t * HD + VLEN * k);
    const float inv = 1.f / total;
    for (int k = 0; k < n; k++) *(vecf *)(y + VLEN * k) = (acc[k] + acc2[k]) * inv;
}

/* One query q [hd] over cached keys and values K, V [C, hd] at slots first .. last, except hole .. hole_end (a
 * rolling cache's slots not yet written or padding, when hole <= hole_end): softmax(q.K * scale) V into y [hd].
 * s: scratch of C floats. */
static void attend(const float *restrict q, const float *restrict K, const float *restrict V, int first, int last,
                   int hole, int hole_end, int hd, float scale, float *restrict s, float *restrict y) {
    switch (hd) {
        case 16: attend_fixed(16, q, K, V, first, last, hole, hole_end, scale, s, y); return;
        case 32: attend_fixed(32, q, K, V, first, last, hole, hole_end, scale, s, y); return;
        case 64: attend_fixed(64, q, K, V, first, last, hole, hole_end, scale, s, y); return;
        case 128: attend_fixed(128, q, K, V, first, last, hole, hole_end, scale, s, y); return;
    }
    for (int t = first; t <= last; t++) s[t] = dot(q, K + (size_t)t * hd, hd) * scale;
    const float total = softmax_numerators_around(s, first, last, hole, hole_end);
    for (int i = 0; i < hd; i++) y[i] = 0.f;
    for (int t = first; t <= last; t++) {
        const float w = s[t] / total, *v = V + (size_t)t * hd;
        #pragma omp simd
        for (int i = 0; i < hd; i++) y[i] += w * v[i];
    }
}

/* Position of row r (batch row r / T, its token r % T) and its cache slot (a rolling cache wraps around: slot
 * start + r % T of the sequence lives at (start + r % T) % C); a padding slot has position 0. */
static inline int slot_of(int r, int T, int start, int C) { return (start + r % T) % C; }
static inline int position_of(int r, int T, int start, const int64_t *pad) {
    int pos = start + r % T - (pad ? (int)pad[r / T] : 0);
    return pos < 0 ? 0 : pos;
}

/* tokens [B, T] (rows token_stride apart) at cache slots start .. start+T-1; pad [B] left padding per row or
 * NULL. Past the cache's length (start + T > cache_len: a rolling cache, RoPE only) it takes one token a row,
 * written over the oldest slot, attending to the last cache_len slots. Writes the logits of the last `keep`
 * tokens of each row, [B, keep, vocab_size]. With K = num_streams > 1, T counts positions of K ids each (tokens
 * [B, T * K], a position's input the sum of its K embeddings) and the logits are [B, keep, K * vocab_size].
 * work: scratch of armm_work_size(m, B * T) floats. Returns (and does nothing) 1 if a token is outside the
 * vocabulary, 2 if a position is past max_seq_len with learned positions or the cache's length is passed by more
 * than one token or without RoPE; else 0. */
int armm_forward(const Model *m, const int64_t *tokens, int64_t token_stride, int B, int T, int start,
                 const int64_t *pad, int keep, float *work, float *logits, int n_threads) {
    const int d = m->d_model, hd = m->head_dim, nh = m->n_head, nkv = m->n_kv_head, C = m->cache_len;
    const int qkv_out = (nh + 2 * nkv) * hd, R = B * T, K = m->num_streams;  /* R rows: one per position */
    float *x = work, *h = x + (size_t)R * d, *qkv = h + (size_t)R * d, *att = qkv + (size_t)R * qkv_out;
    float *ff = att + (size_t)R * nh * hd, *scores = ff + (size_t)R * m->d_ff;
    const float scale = 1.f / sqrtf((float)hd);
    const int rolled = start + T > C;
    if (start < 0 || (rolled && (T != 1 || !m->rope_cos || !m->rope_inv_freq))) return 2;
    if (K < 1) return 1;
    for (int r = 0; r < R; r++) {
        for (int k = 0; k < K; k++) {
            int64_t token = tokens[(r / T) * token_stride + (int64_t)(r % T) * K + k];
            if (token < 0 || token >= m->vocab_size) return 1;
        }
        if (start + r % T - (pad ? pad[r / T] : 0) >= m->max_seq_len && !rolled) return 2;
    }

    #pragma omp parallel num_threads(n_threads)
    {
        #pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            const int64_t *ids = tokens + (r / T) * token_stride + (int64_t)(r % T) * K;
            const float *p = m->pos_emb ? m->pos_emb + (size_t)position_of(r, T, start, pad) * d : NULL;
            float *row = x + (size_t)r * d;
            for (int i = 0; i < d; i++) row[i] = m->tok_emb[(size_t)ids[0] * d + i];
            for (int k = 1; k < K; k++)
                for (int i = 0; i < d; i++) row[i] += m->tok_emb[(size_t)ids[k] * d + i];
            if (p)
                for (int i = 0; i < d; i++) row[i] += p[i];
        }
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *L = &m->layers[l];
            const Matrix qkv_w = {L->qkv_weight, L->qkv_q, L->qkv_scale};
            const Matrix attn_proj_w = {L->attn_proj_weight, L->attn_proj_q, L->attn_proj_scale};
            const Matrix fc_w = {L->fc_weight, L->fc_q, L->fc_scale};
            const Matrix mlp_proj_w = {L->mlp_proj_weight, L->mlp_proj_q, L->mlp_proj_scale};
            norm(m, x, R, L->norm_1_weight, L->norm_1_bias, h);
            linear(h, R, d, qkv_w, L->qkv_bias, qkv_out, qkv, 0);
            /* rotary embeddings on q and k, then k and v into the cache at each token's slot */
            #pragma omp for schedule(static)
            for (int r = 0; r < R; r++) {
                float *row = qkv + (size_t)r * qkv_out;
                if (m->rope_cos)
                    for (int j = 0; j < nh + nkv; j++) rope(m, row + (size_t)j * hd, position_of(r, T, start, pad));
                for (int j = 0; j < nkv; j++) {
                    size_t at = (((size_t)(r / T) * nkv + j) * C + slot_of(r, T, start, C)) * hd;
                    for (int i = 0; i < hd; i++) {
                        L->k_cache[at + i] = row[(size_t)(nh + j) * hd + i];
                        L->v_cache[at + i] = row[(size_t)(nh + nkv + j) * hd + i];
                    }
                }
            }
            /* attention of each (token, head) over the cache slots pad[b] .. its own; a padding token (its slot
             * below pad[b]) attends to itself only. Past the cache's length, over the last C slots of the sequence
             * from pad[b] on: all C cache slots, or those from pad[b] % C round to the token's, leaving a hole */
            #pragma omp for collapse(2) schedule(static)
            for (int r = 0; r < R; r++) {
                for (int j = 0; j < nh; j++) {
                    int b = r / T, kv = j / (nh / nkv), at = start + r % T, first = pad ? (int)pad[b] : 0;
                    int last = at, hole = 1, hole_end = 0;  /* no hole */
                    if (rolled) {
                        last = at % C;
                        if (first <= at - C + 1) first = 0, last = C - 1;  /* the whole window is real */
                        else if (first % C <= last) first %= C;             /* one run of slots */
                        else hole = last + 1, hole_end = first % C - 1, first = 0, last = C - 1;
                    } else if (first > last) {
                        first = last;
                    }
                    attend(qkv + (size_t)r * qkv_out + (size_t)j * hd,
                           L->k_cache + ((size_t)b * nkv + kv) * C * hd, L->v_cache + ((size_t)b * nkv + kv) * C * hd,
                           first, last, hole, hole_end, hd, scale, scores + ((size_t)r * nh + j) * C,
                           att + (size_t)r * nh * hd + (size_t)j * hd);
                }
            }
            linear(att, R, nh * hd, attn_proj_w, L->attn_proj_bias, d, x, 1);
            norm(m, x, R, L->norm_2_weight, L->norm_2_bias, h);
            mlp_in(m, h, R, fc_w, L->fc_bias, ff);
            linear(ff, R, m->d_ff, mlp_proj_w, L->mlp_proj_bias, d, x, 1);
        }
        /* the output layer for the last `keep` tokens of each row: gather them, then norm and project */
        #pragma omp for schedule(static)
        for (int k = 0; k < B * keep; k++) {
            const float *src = x + ((size_t)(k / keep) * T + T - keep + k % keep) * d;
            for (int i = 0; i < d; i++) qkv[(size_t)k * d + i] = src[i];
        }
        norm(m, qkv, B * keep, m->norm_f_weight, m->norm_f_bias, h);
        const Matrix lm_head_w = {m->lm_head_weight, m->lm_head_q, m->lm_head_scale};
        linear(h, B * keep, d, lm_head_w, NULL, K * m->vocab_size, logits, 0);
    }
    return 0;
}

/* Floats of scratch armm_forward needs for R = B * T tokens. */
int64_t armm_work_size(const Model *m, int R) {
    int64_t qkv_out = (int64_t)(m->n_head + 2 * m->n_kv_head) * m->head_dim;
    return R * (2 * (int64_t)m->d_model + qkv_out + (int64_t)m->n_head * m->head_dim + m->d_ff
                + (int64_t)m->n_head * m->cache_len);
}
