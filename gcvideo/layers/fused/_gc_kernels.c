/* Fused CPU kernels of the GC block (float32), loaded by gcvideo/layers/fused/kernels.py.
 *
 * The block's own work is a few passes over a (C, T*H*W) feature map; torch ops need seven
 * (logits, weighted sum; gradient sum over positions, x.g_ctx, x^T dlogits, two rank-1 updates).
 * Here, channels-last (L, C) maps: the forward pooling is one pass with an online softmax; the
 * backward is one pass for ReLU mask + sum over positions (replacing the ReLU backward the block
 * has anyway) and one pass that reads y and g, writes dL/dy and accumulates dL/dw_k. Contiguous
 * (C, L) maps take two row-streaming passes for the pooling and for its backward (a block of
 * positions across all channels would be C short strided pieces: slower, bench_context.py).
 * The output relu(y + shortcut + term) is one pass in both layouts. The transform's 1x1x1 convs
 * on (N, C) context vectors at small batch are one multithreaded pass over their weights each
 * (gc_linear_forward / gc_linear_backward).
 *
 * Layout: cl = 1: x[n][l][c] (channels_last_3d), cl = 0: x[n][c][l] (contiguous). L = T*H*W.
 * Threads: OpenMP (the libgomp that PyTorch has loaded), over ranges of positions or channels.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef long long i64;

static void gc_pool_forward_rows(const float *x, const float *w, float bias, i64 N, i64 C, i64 L, int nt,
                                 float *ctx, float *p);
static void gc_pool_backward_rows(const float *y, const float *g, const float *p, const float *gctx, const float *cg,
                           const float *w, i64 N, i64 C, i64 L, int nt, float *grad_y, float *gw, float *gb,
                           float *sp);

static void pool_backward_onepass(const float *y, const float *g, const float *p, const float *gctx, const float *cg,
                                  const float *w, i64 N, i64 C, i64 L, int nt, float *grad_y, float *gw, float *gb,
                                  float *sp);
static void add_outer(float *m, const float *u, const float *v, float d, i64 rows, i64 cols, int nt);

/* [lo, hi) of the t-th of nt ranges of [0, n) in units of `unit` */
static void split(i64 n, i64 unit, int t, int nt, i64 *lo, i64 *hi) {
    i64 units = (n + unit - 1) / unit;
    i64 a = units * t / nt, b = units * (t + 1) / nt;
    *lo = a * unit < n ? a * unit : n;
    *hi = b * unit < n ? b * unit : n;
}

/* sum_j a[j] b[j] (float, vectorised) */
static inline float dotf(const float *a, const float *b, i64 n) {
    float v = 0.f;
#pragma omp simd reduction(+ : v)
    for (i64 j = 0; j < n; j++) v += a[j] * b[j];
    return v;
}

/* Forward: ctx[n][c] = sum_l p[n][l] x[n][c][l], p = softmax_l(w . x_l + b). Writes ctx (N, C), p (N, L). */
void gc_pool_forward(const float *x, const float *w, float bias, i64 N, i64 C, i64 L, int cl, int nt,
                     float *ctx, float *p) {
    if (!cl) {
        gc_pool_forward_rows(x, w, bias, N, C, L, nt, ctx, p);
        return;
    }
    float *acc = (float *)malloc(sizeof(float) * (size_t)(C * nt));
    float *ms = (float *)malloc(sizeof(float) * nt);
    double *zs = (double *)malloc(sizeof(double) * nt);  /* softmax sums in double: sum_l p_l = 1 to rounding */
    for (i64 n = 0; n < N; n++) {
        const float *xn = x + n * C * L;
        float *pn = p + n * L;
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            float *a = acc + (i64)t * C;
            float m = -INFINITY;
            double z = 0.0;
            i64 lo, hi;
            split(L, 1, t, T, &lo, &hi);
            memset(a, 0, sizeof(float) * C);
            for (i64 l = lo; l < hi; l++) {
                const float *xl = xn + l * C;
                float s = bias;
#pragma omp simd reduction(+ : s)
                for (i64 c = 0; c < C; c++) s += w[c] * xl[c];
                pn[l] = s;  /* the logit; p in a second, small pass */
                if (s > m) {
                    float r = expf(m - s);
                    z *= (double)r;
#pragma omp simd
                    for (i64 c = 0; c < C; c++) a[c] *= r;
                    m = s;
                }
                float e = expf(s - m);
                z += e;
#pragma omp simd
                for (i64 c = 0; c < C; c++) a[c] += e * xl[c];
            }
            ms[t] = m;
            zs[t] = z;
#pragma omp barrier
#pragma omp single
            {
                float M = -INFINITY;
                double Z = 0.0;
                for (int u = 0; u < T; u++) if (ms[u] > M) M = ms[u];
                for (int u = 0; u < T; u++) if (zs[u] > 0.0) Z += zs[u] * exp((double)ms[u] - M);
                for (i64 c = 0; c < C; c++) ctx[n * C + c] = 0.f;
                for (int u = 0; u < T; u++) {
                    if (!(zs[u] > 0.0)) continue;
                    float r = (float)(exp((double)ms[u] - M) / Z);
                    const float *au = acc + (i64)u * C;
                    for (i64 c = 0; c < C; c++) ctx[n * C + c] += r * au[c];
                }
                ms[0] = M;
                zs[0] = Z;
            }
            float M = ms[0];
            double Z = zs[0];
#pragma omp for schedule(static)
            for (i64 l = 0; l < L; l++) pn[l] = (float)(expf(pn[l] - M) / Z);
        }
    }
    free(acc);
    free(ms);
    free(zs);
}

/* ReLU backward and its sum over positions: g = gout where out > 0 else 0; gsum[n][c] = sum_l g. */
void gc_relu_grad_sum(const float *gout, const float *out, float *g, float *gsum, i64 N, i64 C, i64 L, int cl,
                      int nt) {
    float *acc = cl ? (float *)malloc(sizeof(float) * (size_t)(C * nt)) : NULL;
    for (i64 n = 0; n < N; n++) {
        const float *go = gout + n * C * L, *o = out + n * C * L;
        float *gn = g + n * C * L;
        if (cl) {
#pragma omp parallel num_threads(nt)
            {
                int t = omp_get_thread_num(), T = omp_get_num_threads();
                float *a = acc + (i64)t * C;
                i64 lo, hi;
                split(L, 1, t, T, &lo, &hi);
                memset(a, 0, sizeof(float) * C);
                for (i64 l = lo; l < hi; l++) {
                    const float *gol = go + l * C, *ol = o + l * C;
                    float *gl = gn + l * C;
#pragma omp simd
                    for (i64 c = 0; c < C; c++) {
                        float v = ol[c] > 0.f ? gol[c] : 0.f;
                        gl[c] = v;
                        a[c] += v;
                    }
                }
#pragma omp barrier
#pragma omp for schedule(static)
                for (i64 c = 0; c < C; c++) {
                    float v = 0.f;
                    for (int u = 0; u < T; u++) v += acc[(i64)u * C + c];
                    gsum[n * C + c] = v;
                }
            }
        } else {
#pragma omp parallel for num_threads(nt) schedule(static)
            for (i64 c = 0; c < C; c++) {
                const float *gor = go + c * L, *orow = o + c * L;
                float *gr = gn + c * L;
                float v = 0.f;
#pragma omp simd reduction(+ : v)
                for (i64 l = 0; l < L; l++) {
                    float u = orow[l] > 0.f ? gor[l] : 0.f;
                    gr[l] = u;
                    v += u;
                }
                gsum[n * C + c] = v;
            }
        }
    }
    free(acc);
}

/* Backward of attention pooling from gctx = dL/dcontext (N, C), given the forward's context (N, C):
 *   gp_l = y_l . gctx,  gl_l = p_l (gp_l - S),  S = sum_l p_l gp_l
 *   grad_y_l = g_l + p_l gctx + gl_l w            (if grad_y; g may be NULL: then 0)
 *   gw = sum_l gl_l y_l,  gb = sum_l gl_l          (summed over the batch too; written, not accumulated)
 * Channels-last maps take one pass (pool_backward_onepass), which needs S before the pass: it
 * uses cg = ctx . gctx (= S up to rounding) and returns the exact sum sp; the difference shifts
 * every gl_l by p_l (cg - sp): gw += (cg - sp) ctx, gb += (cg - sp), and, where above float32
 * rounding of grad_y's p_l gctx term (large attention weights w), grad_y_l += p_l (cg - sp) w
 * (one more pass). Contiguous maps take two passes with the exact sum (sp = cg: nothing to correct). */
void gc_pool_backward(const float *y, const float *g, const float *p, const float *gctx, const float *ctx,
                      const float *w, i64 N, i64 C, i64 L, int cl, int nt, float *grad_y, float *gw, float *gb) {
    float *cg = (float *)malloc(sizeof(float) * (size_t)(2 * N)), *sp = cg + N;
    for (i64 n = 0; n < N; n++) {
        double v = 0.0;
        for (i64 c = 0; c < C; c++) v += (double)ctx[n * C + c] * gctx[n * C + c];
        cg[n] = (float)v;
    }
    if (cl)
        pool_backward_onepass(y, g, p, gctx, cg, w, N, C, L, nt, grad_y, gw, gb, sp);
    else
        gc_pool_backward_rows(y, g, p, gctx, cg, w, N, C, L, nt, grad_y, gw, gb, sp);
    float dmax = 0.f, wmax = 0.f, gmax = 0.f;
    for (i64 n = 0; n < N; n++) {
        const float d = cg[n] - sp[n];
        dmax = fmaxf(dmax, fabsf(d));
        *gb += d;
        for (i64 c = 0; c < C; c++) gw[c] += d * ctx[n * C + c];
    }
    for (i64 c = 0; c < C; c++) wmax = fmaxf(wmax, fabsf(w[c]));
    for (i64 j = 0; j < N * C; j++) gmax = fmaxf(gmax, fabsf(gctx[j]));
    if (grad_y && dmax * wmax > 1e-6f * gmax) {
        for (i64 n = 0; n < N; n++) {  /* rows l (channels-last) or rows c (contiguous) */
            const float d = cg[n] - sp[n], *pn = p + n * L;
            float *dn = grad_y + n * C * L;
            if (cl)
                add_outer(dn, pn, w, d, L, C, nt);
            else
                add_outer(dn, w, pn, d, C, L, nt);
        }
    }
    free(cg);
}

static void pool_backward_onepass(const float *y, const float *g, const float *p, const float *gctx, const float *cg,
                                  const float *w, i64 N, i64 C, i64 L, int nt, float *grad_y, float *gw, float *gb,
                                  float *sp) {
    /* the two sums over positions accumulate in double (one term per position) */
    float *acc = (float *)malloc(sizeof(float) * (size_t)(C * nt));
    double *accb = (double *)malloc(sizeof(double) * nt), *accs = (double *)malloc(sizeof(double) * nt);
    memset(acc, 0, sizeof(float) * (size_t)(C * nt));
    memset(accb, 0, sizeof(double) * nt);
    for (i64 n = 0; n < N; n++) {
        const float *yn = y + n * C * L, *pn = p + n * L, *gc = gctx + n * C;
        const float *gn = g ? g + n * C * L : NULL;
        float *dn = grad_y ? grad_y + n * C * L : NULL;
        const float cgn = cg[n];
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            float *a = acc + (i64)t * C;
            double ab = 0.0, as = 0.0;
            i64 lo, hi;
            split(L, 1, t, T, &lo, &hi);
            for (i64 l = lo; l < hi; l++) {
                const float *yl = yn + l * C;
                float gp = dotf(yl, gc, C);
                float pl = pn[l], gll = pl * (gp - cgn);
                ab += gll;
                as += (double)pl * gp;
#pragma omp simd
                for (i64 c = 0; c < C; c++) a[c] += gll * yl[c];
                if (dn) {
                    float *dl = dn + l * C;
                    if (gn) {
                        const float *gl = gn + l * C;
#pragma omp simd
                        for (i64 c = 0; c < C; c++) dl[c] = gl[c] + pl * gc[c] + gll * w[c];
                    } else {
#pragma omp simd
                        for (i64 c = 0; c < C; c++) dl[c] = pl * gc[c] + gll * w[c];
                    }
                }
            }
            accb[t] += ab;
            accs[t] = as;
        }
        double v = 0.0;
        for (int u = 0; u < nt; u++) v += accs[u];
        sp[n] = (float)v;
        memset(accs, 0, sizeof(double) * nt);
    }
    for (i64 c = 0; c < C; c++) {
        double v = 0.0;
        for (int u = 0; u < nt; u++) v += acc[(i64)u * C + c];
        gw[c] = (float)v;
    }
    double vb = 0.0;
    for (int u = 0; u < nt; u++) vb += accb[u];
    *gb = (float)vb;
    free(acc);
    free(accb);
    free(accs);
}

/* The block's output in one pass: out = relu(y + s + t) with t (N, C) broadcast over positions
 * (the GC term merged into the residual add and ReLU). */
void gc_add_relu(const float *y, const float *s, const float *t, float *out, i64 N, i64 C, i64 L, int cl, int nt) {
    for (i64 n = 0; n < N; n++) {
        const float *yn = y + n * C * L, *sn = s + n * C * L, *tn = t + n * C;
        float *on = out + n * C * L;
        if (cl) {
#pragma omp parallel for num_threads(nt) schedule(static)
            for (i64 l = 0; l < L; l++) {
                const float *yl = yn + l * C, *sl = sn + l * C;
                float *ol = on + l * C;
#pragma omp simd
                for (i64 c = 0; c < C; c++) {
                    float v = yl[c] + sl[c] + tn[c];
                    ol[c] = v > 0.f ? v : 0.f;
                }
            }
        } else {
#pragma omp parallel for num_threads(nt) schedule(static)
            for (i64 c = 0; c < C; c++) {
                const float *yr = yn + c * L, *sr = sn + c * L;
                float *orow = on + c * L;
                const float tc = tn[c];
#pragma omp simd
                for (i64 l = 0; l < L; l++) {
                    float v = yr[l] + sr[l] + tc;
                    orow[l] = v > 0.f ? v : 0.f;
                }
            }
        }
    }
}

/* The transform's 1x1x1 convs at small batch (N <= GC_LINEAR_MAX_N): y[n][i] = b[i] + W[i] . x[n],
 * W (R, K) row-major. At N = 1 these are matrix-vector products bound by reading W (the +all GC
 * model's 10 M transform parameters); torch.mv here runs on one thread at a fraction of the
 * memory rate. One pass over W, rows split over the threads; each row is used for all N inputs
 * while it is in L1. b may be NULL. */
void gc_linear_forward(const float *W, const float *x, const float *b, i64 N, i64 R, i64 K, int nt, float *y) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 i = 0; i < R; i++) {
        const float *wi = W + i * K;
        for (i64 n = 0; n < N; n++) y[n * R + i] = (b ? b[i] : 0.f) + dotf(wi, x + n * K, K);
    }
}

/* Its backward in one pass over W: gW[i][j] = sum_n g[n][i] x[n][j] (if gW) and
 * dx[n][j] = sum_i g[n][i] W[i][j] (if dx; per-thread partial sums, then added in thread order). */
void gc_linear_backward(const float *W, const float *x, const float *g, i64 N, i64 R, i64 K, int nt, float *gW,
                        float *dx) {
    float *acc = dx ? (float *)malloc(sizeof(float) * (size_t)(N * K * nt)) : NULL;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *a = acc ? acc + (i64)t * N * K : NULL;
        i64 lo, hi;
        split(R, 1, t, T, &lo, &hi);
        if (a) memset(a, 0, sizeof(float) * (size_t)(N * K));
        for (i64 i = lo; i < hi; i++) {
            const float *wi = W + i * K;
            if (gW) {
                float *gi = gW + i * K;
                const float g0 = g[i];
#pragma omp simd
                for (i64 j = 0; j < K; j++) gi[j] = g0 * x[j];
                for (i64 n = 1; n < N; n++) {
                    const float gn = g[n * R + i];
                    const float *xn = x + n * K;
#pragma omp simd
                    for (i64 j = 0; j < K; j++) gi[j] += gn * xn[j];
                }
            }
            if (a) {
                for (i64 n = 0; n < N; n++) {
                    const float gn = g[n * R + i];
                    float *an = a + n * K;
#pragma omp simd
                    for (i64 j = 0; j < K; j++) an[j] += gn * wi[j];
                }
            }
        }
#pragma omp barrier
        if (a) {  /* dx = sum over threads of the partial sums, each thread over a range of dx */
            i64 jlo, jhi;
            split(N * K, 16, t, T, &jlo, &jhi);
            for (i64 j = jlo; j < jhi; j++) {
                float v = 0.f;
                for (int u = 0; u < T; u++) v += acc[(i64)u * N * K + j];
                dx[j] = v;
            }
        }
    }
    free(acc);
}

/* The whole bottleneck transform on (N, C) context vectors in one call (no per-op overhead):
 * h = W1 x + b1 (Cr), [LayerNorm over Cr with weight lnw, bias lnb; lnw == NULL: none], r = ReLU,
 * t = W2 r + b2 (C). Saves hn (N, Cr: the normalised h, or h without LayerNorm), rstd (N) and r. */
void gc_transform_forward(const float *x, const float *W1, const float *b1, const float *lnw, const float *lnb,
                          float eps, const float *W2, const float *b2, i64 N, i64 C, i64 Cr, int nt, float *hn,
                          float *rstd, float *r, float *t) {
    gc_linear_forward(W1, x, b1, N, Cr, C, nt, hn);
    for (i64 n = 0; n < N; n++) {
        float *hv = hn + n * Cr, *rv = r + n * Cr;
        if (lnw) {
            double mu = 0.0, var = 0.0;
            for (i64 j = 0; j < Cr; j++) mu += hv[j];
            mu /= (double)Cr;
            for (i64 j = 0; j < Cr; j++) var += (hv[j] - mu) * (hv[j] - mu);
            var /= (double)Cr;
            const float rs = (float)(1.0 / sqrt(var + (double)eps));
            rstd[n] = rs;
            for (i64 j = 0; j < Cr; j++) {
                hv[j] = (float)(hv[j] - mu) * rs;
                const float v = hv[j] * lnw[j] + lnb[j];
                rv[j] = v > 0.f ? v : 0.f;
            }
        } else {
            rstd[n] = 1.f;
            for (i64 j = 0; j < Cr; j++) rv[j] = hv[j] > 0.f ? hv[j] : 0.f;
        }
    }
    gc_linear_forward(W2, r, b2, N, C, Cr, nt, t);
}

/* Its backward from g = dL/dt (N, C): parameter gradients (gW1 (Cr, C), gb1, glnw, glnb (Cr),
 * gW2 (C, Cr), gb2 (C); a NULL weight-gradient pointer skips that write) and dx = dL/dx (N, C).
 * work: 2 N Cr floats. */
void gc_transform_backward(const float *x, const float *W1, const float *lnw, const float *W2, const float *hn,
                           const float *rstd, const float *r, const float *g, i64 N, i64 C, i64 Cr, int nt,
                           float *gW1, float *gb1, float *glnw, float *glnb, float *gW2, float *gb2, float *dx,
                           float *work) {
    float *dr = work, *dh = work + N * Cr;
    for (i64 i = 0; i < C; i++) {
        float s = 0.f;
        for (i64 n = 0; n < N; n++) s += g[n * C + i];
        gb2[i] = s;
    }
    gc_linear_backward(W2, r, g, N, C, Cr, nt, gW2, dr);  /* dL/dr */
    for (i64 j = 0; j < N * Cr; j++)
        if (!(r[j] > 0.f)) dr[j] = 0.f;  /* ReLU */
    for (i64 j = 0; lnw && j < Cr; j++) {  /* LayerNorm's weight and bias */
        float sw = 0.f, sb = 0.f;
        for (i64 n = 0; n < N; n++) {
            sw += dr[n * Cr + j] * hn[n * Cr + j];
            sb += dr[n * Cr + j];
        }
        glnw[j] = sw;
        glnb[j] = sb;
    }
    for (i64 n = 0; n < N; n++) {
        const float *drv = dr + n * Cr, *hv = hn + n * Cr;
        float *dhv = dh + n * Cr;
        if (lnw) {  /* dh = rstd (gw - mean(gw) - hn mean(gw hn)), gw = dr * lnw */
            double m1 = 0.0, m2 = 0.0;
            for (i64 j = 0; j < Cr; j++) {
                const double gw = (double)drv[j] * lnw[j];
                m1 += gw;
                m2 += gw * hv[j];
            }
            m1 /= (double)Cr;
            m2 /= (double)Cr;
            for (i64 j = 0; j < Cr; j++)
                dhv[j] = rstd[n] * (float)((double)drv[j] * lnw[j] - m1 - hv[j] * m2);
        } else {
            memcpy(dhv, drv, sizeof(float) * (size_t)Cr);
        }
    }
    for (i64 j = 0; j < Cr; j++) {
        float s = 0.f;
        for (i64 n = 0; n < N; n++) s += dh[n * Cr + j];
        gb1[j] = s;
    }
    gc_linear_backward(W1, x, dh, N, Cr, C, nt, gW1, dx);
}

/* The (C, L) layout in two streaming passes (rows are contiguous; a block of positions across
 * all channels would be C short strided pieces). Forward: logits over each thread's positions,
 * row by row; softmax; then the weighted sum, each thread over whole rows. */
static void gc_pool_forward_rows(const float *x, const float *w, float bias, i64 N, i64 C, i64 L, int nt,
                          float *ctx, float *p) {
    float *ms = (float *)malloc(sizeof(float) * nt);
    double *zs = (double *)malloc(sizeof(double) * nt);
    for (i64 n = 0; n < N; n++) {
        const float *xn = x + n * C * L;
        float *pn = p + n * L;
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            i64 lo, hi;
            split(L, 16, t, T, &lo, &hi);
            for (i64 l = lo; l < hi; l++) pn[l] = bias;
            for (i64 c = 0; c < C; c++) {
                const float *xr = xn + c * L;
                const float wc = w[c];
#pragma omp simd
                for (i64 l = lo; l < hi; l++) pn[l] += wc * xr[l];
            }
            float m = -INFINITY;
            for (i64 l = lo; l < hi; l++) if (pn[l] > m) m = pn[l];
            ms[t] = m;
#pragma omp barrier
            float M = -INFINITY;
            for (int u = 0; u < T; u++) if (ms[u] > M) M = ms[u];
            double z = 0.0;
            for (i64 l = lo; l < hi; l++) {
                float e = expf(pn[l] - M);
                pn[l] = e;
                z += e;
            }
            zs[t] = z;
#pragma omp barrier
            double Z = 0.0;
            for (int u = 0; u < T; u++) Z += zs[u];
            for (i64 l = lo; l < hi; l++) pn[l] = (float)(pn[l] / Z);
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 c = 0; c < C; c++) ctx[n * C + c] = dotf(pn, xn + c * L, L);
        }
    }
    free(ms);
    free(zs);
}

/* Backward in the (C, L) layout, two streaming passes: gp = y^T gctx over each thread's positions
 * (row by row) and the exact S = sum_l p_l gp_l; then each thread over whole rows writes
 * grad_y = g + p gctx_c + gl w_c and dL/dw_c = sum_l gl_l y_cl. sp[n] = cg[n] (nothing to correct). */
static void gc_pool_backward_rows(const float *y, const float *g, const float *p, const float *gctx, const float *cg,
                           const float *w, i64 N, i64 C, i64 L, int nt, float *grad_y, float *gw, float *gb,
                           float *sp) {
    float *gl = (float *)malloc(sizeof(float) * (size_t)L);
    double *ss = (double *)malloc(sizeof(double) * nt), *bs = (double *)malloc(sizeof(double) * nt);
    double gbs = 0.0;
    for (i64 c = 0; c < C; c++) gw[c] = 0.f;
    for (i64 n = 0; n < N; n++) {
        const float *yn = y + n * C * L, *pn = p + n * L, *gc = gctx + n * C;
        const float *gn = g ? g + n * C * L : NULL;
        float *dn = grad_y ? grad_y + n * C * L : NULL;
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            i64 lo, hi;
            split(L, 16, t, T, &lo, &hi);
            for (i64 l = lo; l < hi; l++) gl[l] = 0.f;
            for (i64 c = 0; c < C; c++) {
                const float *yr = yn + c * L;
                const float gcc = gc[c];
#pragma omp simd
                for (i64 l = lo; l < hi; l++) gl[l] += gcc * yr[l];
            }
            double s = 0.0;
            for (i64 l = lo; l < hi; l++) s += (double)pn[l] * gl[l];
            ss[t] = s;
#pragma omp barrier
            double S = 0.0;
            for (int u = 0; u < T; u++) S += ss[u];
            double b = 0.0;
            for (i64 l = lo; l < hi; l++) {
                gl[l] = (float)(pn[l] * (gl[l] - S));
                b += gl[l];
            }
            bs[t] = b;
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 c = 0; c < C; c++) {
                const float *yr = yn + c * L;
                gw[c] += dotf(gl, yr, L);
                if (dn) {
                    float *dr = dn + c * L;
                    const float gcc = gc[c], wc = w[c];
                    if (gn) {
                        const float *gr = gn + c * L;
#pragma omp simd
                        for (i64 l = 0; l < L; l++) dr[l] = gr[l] + pn[l] * gcc + gl[l] * wc;
                    } else {
#pragma omp simd
                        for (i64 l = 0; l < L; l++) dr[l] = pn[l] * gcc + gl[l] * wc;
                    }
                }
            }
#pragma omp single
            for (int u = 0; u < T; u++) gbs += bs[u];
        }
        sp[n] = cg[n];
    }
    *gb = (float)gbs;
    free(gl);
    free(ss);
    free(bs);
}

/* m[i][j] += d u[i] v[j] for a (rows, cols) row-major m */
static void add_outer(float *m, const float *u, const float *v, float d, i64 rows, i64 cols, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 i = 0; i < rows; i++) {
        const float a = u[i] * d;
        float *mi = m + i * cols;
#pragma omp simd
        for (i64 j = 0; j < cols; j++) mi[j] += a * v[j];
    }
}

/* A whole GC block at the pre-add position in one call each way (float32, one layout, N small):
 * the kernels above in sequence, so that the Python side makes one call, not a dozen small ops.
 * Forward: attention pooling -> bottleneck transform -> out = relu(y + s + t). */
void gc_block_forward(const float *y, const float *s, const float *w, float bias, const float *W1, const float *b1,
                      const float *lnw, const float *lnb, float eps, const float *W2, const float *b2, i64 N, i64 C,
                      i64 Cr, i64 L, int cl, int nt, float *ctx, float *p, float *hn, float *rstd, float *r, float *t,
                      float *out) {
    gc_pool_forward(y, w, bias, N, C, L, cl, nt, ctx, p);
    gc_transform_forward(ctx, W1, b1, lnw, lnb, eps, W2, b2, N, C, Cr, nt, hn, rstd, r, t);
    gc_add_relu(y, s, t, out, N, C, L, cl, nt);
}

/* Backward from gout: g = ReLU-masked gout (the shortcut's gradient), the transform's parameter
 * gradients, grad_y = g + pooling term, gw (C) / gb (1) of the attention conv. work: 2 N C + 2 N Cr floats. */
void gc_block_backward(const float *gout, const float *out, const float *y, const float *p, const float *ctx,
                       const float *w, const float *W1, const float *lnw, const float *W2, const float *hn,
                       const float *rstd, const float *r, i64 N, i64 C, i64 Cr, i64 L, int cl, int nt, float *g,
                       float *grad_y, float *gW1, float *gb1, float *glnw, float *glnb, float *gW2, float *gb2,
                       float *gw, float *gb, float *work) {
    float *gt = work, *gctx = work + N * C, *tw = work + 2 * N * C;
    gc_relu_grad_sum(gout, out, g, gt, N, C, L, cl, nt);
    gc_transform_backward(ctx, W1, lnw, W2, hn, rstd, r, gt, N, C, Cr, nt, gW1, gb1, glnw, glnb, gW2, gb2, gctx, tw);
    gc_pool_backward(y, g, p, gctx, ctx, w, N, C, L, cl, nt, grad_y, gw, gb);
}
