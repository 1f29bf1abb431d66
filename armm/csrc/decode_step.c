/* One KV-cached decode step of armm's Transformer on the CPU, float32: every weight is read once, in place.
 *
 * A batch-1 decode step is bound by memory bandwidth: it multiplies one row by every weight matrix. In PyTorch
 * the step is ~150 operator calls, each with its own dispatch, and the matrix-vector kernels read weights at
 * 60-80% of the bandwidth. Here the whole step -- embeddings, norms, projections, rotary embeddings, the cache
 * write, attention, the MLP (its activation fused into its first layer) and the output layer -- runs inside one
 * OpenMP parallel region; each weight row is streamed once against the batch's rows, and each output is summed
 * by one thread in a fixed order, so results do not depend on the thread count. armm.native builds this file on first use and calls
 * armm_decode_step through ctypes; armm.model falls back to PyTorch wherever it cannot (tests compare both).
 *
 * Layout conventions are those of armm/model.py: fused qkv = [q heads | k heads | v heads], SwiGLU's fc =
 * [gate | up], rotary embeddings in the half-rotation layout, the cache [batch, n_kv_head, max_len, head_dim]. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const float *norm_1_weight, *norm_1_bias;   /* bias NULL for RMSNorm or bias=False */
    const float *qkv_weight, *qkv_bias;
    const float *attn_proj_weight, *attn_proj_bias;
    const float *norm_2_weight, *norm_2_bias;
    const float *fc_weight, *fc_bias;
    const float *mlp_proj_weight, *mlp_proj_bias;
    float *k_cache, *v_cache;                   /* [batch, n_kv_head, cache_len, head_dim] */
} Layer;

typedef struct {
    int32_t n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab_size, cache_len, max_seq_len;
    int32_t rmsnorm, swiglu;
    float norm_eps;
    const float *tok_emb, *pos_emb;             /* pos_emb NULL with rotary embeddings */
    const float *rope_cos, *rope_sin;           /* [max_seq_len, head_dim], NULL with learned positions */
    const float *norm_f_weight, *norm_f_bias, *lm_head_weight;
    const Layer *layers;
} Model;

static inline float dot(const float *w, const float *x, int n) {
    float s = 0.f;
    #pragma omp simd reduction(+:s)
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

/* y[b, o] (+)= x[b, :] . W[o, :] + bias[o] for b < B; each weight row is read once for all B rows. */
static void linear(const float *x, int B, int in, const float *W, const float *bias, int out, float *y,
                   int accumulate) {
    #pragma omp for schedule(static)
    for (int o = 0; o < out; o++) {
        const float *w = W + (size_t)o * in;
        for (int b = 0; b < B; b++) {
            float s = dot(w, x + (size_t)b * in, in) + (bias ? bias[o] : 0.f);
            y[(size_t)b * out + o] = accumulate ? y[(size_t)b * out + o] + s : s;
        }
    }
}

/* The MLP's first layer and its activation, y [B, d_ff]: GELU (tanh approximation, as v * sigmoid(2u)) of each
 * output, or SwiGLU, silu(gate) * up, from the pair of rows o (gate) and d_ff + o (up) of the fused weight. */
static void mlp_in(const Model *m, const float *x, int B, const float *W, const float *bias, float *y) {
    const int d = m->d_model, f = m->d_ff;
    #pragma omp for schedule(static)
    for (int o = 0; o < f; o++) {
        const float *gate = W + (size_t)o * d, *up = W + (size_t)(f + o) * d;
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * d;
            float v = dot(gate, xb, d) + (bias ? bias[o] : 0.f);
            if (m->swiglu)
                y[(size_t)b * f + o] = v / (1.f + expf(-v)) * (dot(up, xb, d) + (bias ? bias[f + o] : 0.f));
            else
                y[(size_t)b * f + o] = v / (1.f + expf(-1.5957691216057308f * (v + 0.044715f * v * v * v)));
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

/* Rotate one head vector (half-rotation layout) by the angles of position pos. */
static void rope(const Model *m, float *v, int pos) {
    int hd = m->head_dim, half = hd / 2;
    const float *c = m->rope_cos + (size_t)pos * hd, *s = m->rope_sin + (size_t)pos * hd;
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i + half] + x1 * s[i + half];
    }
}

/* tokens [B] (row stride token_stride) at cache slot `slot`; pad [B] left padding per row or NULL.
 * work: scratch of armm_work_size floats. logits: [B, vocab_size]. Returns (and does nothing) 1 if a token
 * is outside the vocabulary, 2 if a position is past max_seq_len; else 0. */
int armm_decode_step(const Model *m, const int64_t *tokens, int64_t token_stride, int B, int slot,
                      const int64_t *pad, float *work, float *logits, int n_threads) {
    const int d = m->d_model, hd = m->head_dim, nh = m->n_head, nkv = m->n_kv_head, T = m->cache_len;
    const int qkv_out = (nh + 2 * nkv) * hd;
    float *x = work, *h = x + (size_t)B * d, *qkv = h + (size_t)B * d, *att = qkv + (size_t)B * qkv_out;
    float *ff = att + (size_t)B * nh * hd, *scores = ff + (size_t)B * m->d_ff;
    const float scale = 1.f / sqrtf((float)hd);
    for (int b = 0; b < B; b++) {
        if (tokens[b * token_stride] < 0 || tokens[b * token_stride] >= m->vocab_size) return 1;
        if (slot - (pad ? pad[b] : 0) >= m->max_seq_len) return 2;
    }

    #pragma omp parallel num_threads(n_threads)
    {
        #pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            int pos = slot - (pad ? (int)pad[b] : 0);
            if (pos < 0) pos = 0;
            const float *e = m->tok_emb + (size_t)tokens[b * token_stride] * d;
            const float *p = m->pos_emb ? m->pos_emb + (size_t)pos * d : NULL;
            for (int i = 0; i < d; i++) x[(size_t)b * d + i] = e[i] + (p ? p[i] : 0.f);
        }
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *L = &m->layers[l];
            norm(m, x, B, L->norm_1_weight, L->norm_1_bias, h);
            linear(h, B, d, L->qkv_weight, L->qkv_bias, qkv_out, qkv, 0);
            /* rotary embeddings on q and k, then k and v into the cache at `slot` */
            #pragma omp for schedule(static)
            for (int b = 0; b < B; b++) {
                float *row = qkv + (size_t)b * qkv_out;
                int pos = slot - (pad ? (int)pad[b] : 0);
                if (pos < 0) pos = 0;
                if (m->rope_cos)
                    for (int j = 0; j < nh + nkv; j++) rope(m, row + (size_t)j * hd, pos);
                for (int j = 0; j < nkv; j++) {
                    size_t at = (((size_t)b * nkv + j) * T + slot) * hd;
                    for (int i = 0; i < hd; i++) {
                        L->k_cache[at + i] = row[(size_t)(nh + j) * hd + i];
                        L->v_cache[at + i] = row[(size_t)(nh + nkv + j) * hd + i];
                    }
                }
            }
            /* attention of each (row, head) over cache slots pad[b] .. slot */
            #pragma omp for collapse(2) schedule(static)
            for (int b = 0; b < B; b++) {
                for (int j = 0; j < nh; j++) {
                    const float *q = qkv + (size_t)b * qkv_out + (size_t)j * hd;
                    int kv = j / (nh / nkv), first = pad ? (int)pad[b] : 0;
                    if (first > slot) first = slot;
                    const float *K = L->k_cache + ((size_t)b * nkv + kv) * T * hd;
                    const float *V = L->v_cache + ((size_t)b * nkv + kv) * T * hd;
                    float *s = scores + ((size_t)b * nh + j) * T, top = -INFINITY, total = 0.f;
                    for (int t = first; t <= slot; t++) {
                        s[t] = dot(q, K + (size_t)t * hd, hd) * scale;
                        if (s[t] > top) top = s[t];
                    }
                    for (int t = first; t <= slot; t++) total += (s[t] = expf(s[t] - top));
                    float *y = att + (size_t)b * nh * hd + (size_t)j * hd;
                    for (int i = 0; i < hd; i++) y[i] = 0.f;
                    for (int t = first; t <= slot; t++) {
                        float w = s[t] / total;
                        #pragma omp simd
                        for (int i = 0; i < hd; i++) y[i] += w * V[(size_t)t * hd + i];
                    }
                }
            }
            linear(att, B, nh * hd, L->attn_proj_weight, L->attn_proj_bias, d, x, 1);
            norm(m, x, B, L->norm_2_weight, L->norm_2_bias, h);
            mlp_in(m, h, B, L->fc_weight, L->fc_bias, ff);
            linear(ff, B, m->d_ff, L->mlp_proj_weight, L->mlp_proj_bias, d, x, 1);
        }
        norm(m, x, B, m->norm_f_weight, m->norm_f_bias, h);
        linear(h, B, d, m->lm_head_weight, NULL, m->vocab_size, logits, 0);
    }
    return 0;
}

/* Floats of scratch armm_decode_step needs for a batch of B rows. */
int64_t armm_work_size(const Model *m, int B) {
    int64_t qkv_out = (int64_t)(m->n_head + 2 * m->n_kv_head) * m->head_dim;
    return B * (2 * (int64_t)m->d_model + qkv_out + (int64_t)m->n_head * m->head_dim + m->d_ff
                + (int64_t)m->n_head * m->cache_len);
}
