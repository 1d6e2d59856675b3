/* Fused CPU kernels of the GC block's attention pooling (float32), loaded by gcvideo/layers/kernels.py.
 *
 * The block's own work is a few passes over a (C, T*H*W) feature map; torch ops need seven
 * (logits, weighted sum; gradient sum over positions, x.g_ctx, x^T dlogits, two rank-1 updates).
 * These kernels need three: the forward is one pass with an online softmax, the backward one
 * pass for relu-mask + sum over positions (replacing the ReLU backward the block has anyway) and
 * one pass that reads y and g and writes dL/dy while accumulating dL/dw_k.
 *
 * Layout: cl = 1: x[n][l][c] (channels_last_3d), cl = 0: x[n][c][l] (contiguous). L = T*H*W.
 * Threads: OpenMP (the libgomp that PyTorch has loaded), over ranges of positions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef long long i64;

/* positions per block in the (C, L) layout: a C x B block of about 512 KB stays in L2 */
static i64 block_of(i64 C) {
    i64 b = 131072 / C;
    if (b < 16) b = 16;
    if (b > 1024) b = 1024;
    return b;
}

/* [lo, hi) of the t-th of nt ranges of [0, n) in units of `unit` */
static void split(i64 n, i64 unit, int t, int nt, i64 *lo, i64 *hi) {
    i64 units = (n + unit - 1) / unit;
    i64 a = units * t / nt, b = units * (t + 1) / nt;
    *lo = a * unit < n ? a * unit : n;
    *hi = b * unit < n ? b * unit : n;
}

/* Forward: ctx[n][c] = sum_l p[n][l] x[n][c][l], p = softmax_l(w . x_l + b). Writes ctx (N, C), p (N, L). */
void gc_pool_forward(const float *x, const float *w, float bias, i64 N, i64 C, i64 L, int cl, int nt,
                     float *ctx, float *p) {
    const i64 B = block_of(C);
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
            split(L, cl ? 1 : B, t, T, &lo, &hi);
            memset(a, 0, sizeof(float) * C);
            if (cl) {
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
            } else {
                float s[1024];
                for (i64 l0 = lo; l0 < hi; l0 += B) {
                    i64 nb = hi - l0 < B ? hi - l0 : B;
                    for (i64 j = 0; j < nb; j++) s[j] = bias;
                    for (i64 c = 0; c < C; c++) {
                        const float *xr = xn + c * L + l0;
                        float wc = w[c];
#pragma omp simd
                        for (i64 j = 0; j < nb; j++) s[j] += wc * xr[j];
                    }
                    float bm = m;
                    for (i64 j = 0; j < nb; j++) {
                        pn[l0 + j] = s[j];
                        if (s[j] > bm) bm = s[j];
                    }
                    if (bm > m) {
                        float r = expf(m - bm);
                        z *= (double)r;
#pragma omp simd
                        for (i64 c = 0; c < C; c++) a[c] *= r;
                        m = bm;
                    }
                    for (i64 j = 0; j < nb; j++) {
                        s[j] = expf(s[j] - m);
                        z += s[j];
                    }
                    for (i64 c = 0; c < C; c++) {
                        const float *xr = xn + c * L + l0;
                        float v = 0.f;
#pragma omp simd reduction(+ : v)
                        for (i64 j = 0; j < nb; j++) v += s[j] * xr[j];
                        a[c] += v;
                    }
                }
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

/* Backward of attention pooling, one pass over y and g:
 *   gp_l = y_l . gctx,  gl_l = p_l (gp_l - cg)   (cg = ctx . gctx, = sum_l p_l gp_l up to rounding)
 *   grad_y_l = g_l + p_l gctx + gl_l w            (if grad_y; g may be NULL: then 0)
 *   gw += sum_l gl_l y_l,  gb += sum_l gl_l        (summed over the batch too)
 *   sp[n] = sum_l p_l gp_l                         (the caller corrects gw, gb for cg - sp)
 * gctx (N, C), cg (N), p (N, L); gw (C), gb (1), sp (N) are written (not accumulated into). */
void gc_pool_backward(const float *y, const float *g, const float *p, const float *gctx, const float *cg,
                      const float *w, i64 N, i64 C, i64 L, int cl, int nt, float *grad_y, float *gw, float *gb,
                      float *sp) {
    const i64 B = block_of(C);
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
            split(L, cl ? 1 : B, t, T, &lo, &hi);
            if (cl) {
                for (i64 l = lo; l < hi; l++) {
                    const float *yl = yn + l * C;
                    float gp = 0.f;
#pragma omp simd reduction(+ : gp)
                    for (i64 c = 0; c < C; c++) gp += yl[c] * gc[c];
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
            } else {
                float gl[1024];
                for (i64 l0 = lo; l0 < hi; l0 += B) {
                    i64 nb = hi - l0 < B ? hi - l0 : B;
                    for (i64 j = 0; j < nb; j++) gl[j] = 0.f;
                    for (i64 c = 0; c < C; c++) {
                        const float *yr = yn + c * L + l0;
                        float gcc = gc[c];
#pragma omp simd
                        for (i64 j = 0; j < nb; j++) gl[j] += gcc * yr[j];
                    }
                    for (i64 j = 0; j < nb; j++) {
                        as += (double)pn[l0 + j] * gl[j];
                        gl[j] = pn[l0 + j] * (gl[j] - cgn);
                        ab += gl[j];
                    }
                    const float *pb = pn + l0;
                    for (i64 c = 0; c < C; c++) {
                        const float *yr = yn + c * L + l0;
                        float v = 0.f;
#pragma omp simd reduction(+ : v)
                        for (i64 j = 0; j < nb; j++) v += gl[j] * yr[j];
                        a[c] += v;
                        if (dn) {
                            float *dr = dn + c * L + l0;
                            float gcc = gc[c], wc = w[c];
                            if (gn) {
                                const float *gr = gn + c * L + l0;
#pragma omp simd
                                for (i64 j = 0; j < nb; j++) dr[j] = gr[j] + pb[j] * gcc + gl[j] * wc;
                            } else {
#pragma omp simd
                                for (i64 j = 0; j < nb; j++) dr[j] = pb[j] * gcc + gl[j] * wc;
                            }
                        }
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
