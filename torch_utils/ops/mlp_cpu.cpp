// CPU kernel of mlp.py: a small MLP with softplus between its layers (the tri-plane decoder),
// forward and backward, over many points at once.
//
//   h_0 = x,  z_l = h_l W_l^T + b_l,  h_{l+1} = softplus(z_l)  (l < L-1),  out = z_{L-1}
//
// and optionally the output "squashed" from a column on: out[:, c] = sigmoid(z[:, c]) * scale
// - shift for c >= from (the decoder's colour and features), applied to the tile in cache
// instead of in three more passes over a [points, out] tensor and three more back.
//
// Why a kernel: with PyTorch ops every layer is a matmul (MKL, ~50 GFLOP/s on such skinny
// shapes here) plus a softplus pass, forward and backward, each a trip through memory of a
// [points, hidden] tensor. Here a tile of 64 points goes through all layers in cache, so
// memory sees only x, out and their gradients. The backward recomputes the tile's forward
// (cheap in cache) instead of saving the hidden activations.
//
// The matmuls are register-blocked: 4 points at a time, the outputs of a layer in vectors of
// 16 floats (GCC vector extensions; widths padded to 16 with zero weights), at most 64 wide,
// so a 4 x 64 block of sums stays in registers. exp and log1p are polynomial (float error
// about 1e-7 relative), vectorised like the rest.
//
// Denormal floats are flushed to zero inside the kernel (FTZ/DAZ in each thread's MXCSR, restored
// after). A trained decoder can have pre-activations beyond -80, where exp() and then the
// log1p series and the backward's products underflow; each denormal operand or result costs a
// microcode assist: in one demo run the decoder took 1.07 s of a 1.47-s G+D step, about 15x
// its usual time. Flushing changes values by less than 1.2e-38.
//
// Reproducible: the points are cut into fixed blocks; each block's weight and bias gradients
// go to its own buffer, summed in block order at the end, whatever the thread count.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <xmmintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Sets flush-to-zero and denormals-are-zero for the calling thread while in scope.
class FlushDenormals {
public:
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtz | kDaz); }
    ~FlushDenormals() { _mm_setcsr(saved_); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

private:
    static constexpr unsigned kFtz = 0x8000, kDaz = 0x0040;
    unsigned saved_;
};

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kMaxWidth = 64;      // widest layer the kernel takes
constexpr int kTile = 64;          // points per tile
constexpr int64_t kBlock = 2048;   // points per gradient block

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float s) { return vf{} + s; }

// exp(t) for t <= 0 (clamped at -87, where it is below 2^-125): 2^n * p(r), t = n ln2 + r.
inline vf exp_nonpositive(vf t) {
    t = t < -87.f ? splat(-87.f) : t;
    const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    const vf n = (t * 1.44269504f + magic) - magic;
    const vf r = (t - n * 0.693145752f) - n * 1.42860677e-6f;
    vf p = splat(1.f / 720.f);
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// log1p(u) for u in [0, 1]: 2 atanh(s) with s = u / (2 + u) <= 1/3, as an odd series in s.
inline vf log1p_unit(vf u) {
    const vf s = u / (u + 2.f);
    const vf z = s * s;
    vf p = splat(1.f / 15.f);
    p = p * z + 1.f / 13.f;
    p = p * z + 1.f / 11.f;
    p = p * z + 1.f / 9.f;
    p = p * z + 1.f / 7.f;
    p = p * z + 1.f / 5.f;
    p = p * z + 1.f / 3.f;
    p = p * z + 1.f;
    return 2.f * s * p;
}

inline vf vabs(vf z) { return z < 0.f ? -z : z; }

// softplus(z) = max(z, 0) + log1p(exp(-|z|)).
inline vf softplus(vf z) { return (z > 0.f ? z : splat(0.f)) + log1p_unit(exp_nonpositive(-vabs(z))); }

// sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) otherwise, with e = exp(-|z|).
inline vf sigmoid(vf z) {
    const vf e = exp_nonpositive(-vabs(z));
    return (z >= 0.f ? splat(1.f) : e) / (e + 1.f);
}

// One layer's weights, padded: WT [in][outp] (for the forward, outputs along vectors) and
// W [out][inp] (for the input gradient, inputs along vectors), inp/outp multiples of 16.
struct Layer {
    int64_t in, out, inp, outp;
    std::vector<float> WT, W, b;
};

int64_t pad16(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// The output columns from `from` on are sigmoid(z) * scale - shift; from < 0: none.
struct Squash {
    int64_t from;
    float scale, shift;
};

// Lane j of the vector that starts at column o: is column o + j squashed?
inline vi squashed_lanes(int64_t o, int64_t from) {
    const vi lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return lane + static_cast<int32_t>(o) >= static_cast<int32_t>(from);
}

// z [rows][outp] of the last layer -> the squashed output, in place.
void squash_tile(float* z, int64_t rows, int64_t outp, const Squash& sq) {
    if (sq.from < 0) return;
    for (int64_t o = sq.from / kLanes * kLanes; o < outp; o += kLanes) {
        const vi mask = squashed_lanes(o, sq.from);
        for (int64_t r = 0; r < rows; ++r) {
            const vf v = load(z + r * outp + o);
            store(z + r * outp + o, mask ? sigmoid(v) * sq.scale - sq.shift : v);
        }
    }
}

// g [rows][outp], the gradient of the squashed output -> that of z (z: the last layer's, unsquashed).
void squash_grad_tile(const float* z, float* g, int64_t rows, int64_t outp, const Squash& sq) {
    if (sq.from < 0) return;
    for (int64_t o = sq.from / kLanes * kLanes; o < outp; o += kLanes) {
        const vi mask = squashed_lanes(o, sq.from);
        for (int64_t r = 0; r < rows; ++r) {
            const vf s = sigmoid(load(z + r * outp + o)), gv = load(g + r * outp + o);
            store(g + r * outp + o, mask ? gv * (s * (1.f - s) * sq.scale) : gv);
        }
    }
}

std::vector<Layer> make_layers(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                               int64_t in_features) {
    TORCH_CHECK(!weights.empty() && weights.size() == biases.size(), "mlp_cpu: need as many biases as weights");
    std::vector<Layer> layers;
    int64_t in = in_features;
    for (size_t l = 0; l < weights.size(); ++l) {
        const at::Tensor w = weights[l].contiguous(), b = biases[l].contiguous();
        TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 2 && w.size(1) == in, "mlp_cpu: weight ", l,
                    " must be float32 [out, ", in, "], got ", w.sizes());
        TORCH_CHECK(b.scalar_type() == at::kFloat && b.dim() == 1 && b.size(0) == w.size(0), "mlp_cpu: bias ", l,
                    " must be float32 [", w.size(0), "]");
        Layer L{in, w.size(0), pad16(in), pad16(w.size(0)), {}, {}, {}};
        TORCH_CHECK(L.inp <= kMaxWidth && L.outp <= kMaxWidth, "mlp_cpu: layers at most ", kMaxWidth, " wide");
        L.WT.assign(L.in * L.outp, 0.f);
        L.W.assign(L.out * L.inp, 0.f);
        L.b.assign(L.outp, 0.f);
        const float* wp = w.data_ptr<float>();
        for (int64_t o = 0; o < L.out; ++o)
            for (int64_t k = 0; k < L.in; ++k) {
                L.WT[k * L.outp + o] = wp[o * L.in + k];
                L.W[o * L.inp + k] = wp[o * L.in + k];
            }
        std::copy_n(b.data_ptr<float>(), L.out, L.b.begin());
        layers.push_back(std::move(L));
        in = w.size(0);
    }
    return layers;
}

// z[r][0:outp] = b + sum_k a[r][k] * WT[k][0:outp] for rows r < rows (a: lda floats per row).
template <int V>
void affine_rows(const float* a, int64_t lda, int64_t rows, const Layer& L, float* z) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        vf acc[4][V];
        for (int i = 0; i < 4; ++i)
            for (int v = 0; v < V; ++v) acc[i][v] = load(L.b.data() + v * kLanes);
        for (int64_t k = 0; k < L.in; ++k) {
            vf w[V];
            for (int v = 0; v < V; ++v) w[v] = load(L.WT.data() + k * L.outp + v * kLanes);
            for (int i = 0; i < 4; ++i) {
                const float s = a[(r + i) * lda + k];
                for (int v = 0; v < V; ++v) acc[i][v] += s * w[v];
            }
        }
        for (int i = 0; i < 4; ++i)
            for (int v = 0; v < V; ++v) store(z + (r + i) * L.outp + v * kLanes, acc[i][v]);
    }
    for (; r < rows; ++r) {
        vf acc[V];
        for (int v = 0; v < V; ++v) acc[v] = load(L.b.data() + v * kLanes);
        for (int64_t k = 0; k < L.in; ++k)
            for (int v = 0; v < V; ++v) acc[v] += a[r * lda + k] * load(L.WT.data() + k * L.outp + v * kLanes);
        for (int v = 0; v < V; ++v) store(z + r * L.outp + v * kLanes, acc[v]);
    }
}

void affine(const float* a, int64_t lda, int64_t rows, const Layer& L, float* z) {
    switch (L.outp / kLanes) {
        case 1: affine_rows<1>(a, lda, rows, L, z); break;
        case 2: affine_rows<2>(a, lda, rows, L, z); break;
        case 3: affine_rows<3>(a, lda, rows, L, z); break;
        default: affine_rows<4>(a, lda, rows, L, z); break;
    }
}

// The forward of one tile: z[l] (pre-activations, rows x outp) for every layer; h[l] =
// softplus(z[l]) for the hidden ones, the next layer's input.
struct TileBuffers {
    std::vector<std::vector<float>> z, h;
    explicit TileBuffers(size_t layers) : z(layers, std::vector<float>(kTile * kMaxWidth)),
                                          h(layers, std::vector<float>(kTile * kMaxWidth)) {}
};

void forward_tile(const std::vector<Layer>& layers, const float* x, int64_t rows, TileBuffers& t) {
    const float* a = x;
    int64_t lda = layers[0].in;
    for (size_t l = 0; l < layers.size(); ++l) {
        const Layer& L = layers[l];
        float* z = t.z[l].data();
        affine(a, lda, rows, L, z);
        if (l + 1 == layers.size()) break;
        float* h = t.h[l].data();
        for (int64_t i = 0; i < rows * L.outp; i += kLanes) store(h + i, softplus(load(z + i)));
        a = h;
        lda = L.outp;
    }
}

// dWT[k][0:outp] += sum_r a[r][k] * g[r][0:outp] (a: lda floats per row, g: outp per row).
// Four inputs k at a time, so each row of g is loaded once per 4 x V multiply-adds.
template <int V>
void weight_grad_rows(const float* a, int64_t lda, const float* g, int64_t rows, const Layer& L, float* dWT) {
    int64_t k = 0;
    for (; k + 4 <= L.in; k += 4) {
        vf acc[4][V] = {};
        for (int64_t r = 0; r < rows; ++r) {
            vf gv[V];
            for (int v = 0; v < V; ++v) gv[v] = load(g + r * L.outp + v * kLanes);
            for (int i = 0; i < 4; ++i) {
                const float s = a[r * lda + k + i];
                for (int v = 0; v < V; ++v) acc[i][v] += s * gv[v];
            }
        }
        for (int i = 0; i < 4; ++i)
            for (int v = 0; v < V; ++v)
                store(dWT + (k + i) * L.outp + v * kLanes, load(dWT + (k + i) * L.outp + v * kLanes) + acc[i][v]);
    }
    for (; k < L.in; ++k) {
        vf acc[V] = {};
        for (int64_t r = 0; r < rows; ++r) {
            const float s = a[r * lda + k];
            for (int v = 0; v < V; ++v) acc[v] += s * load(g + r * L.outp + v * kLanes);
        }
        for (int v = 0; v < V; ++v) store(dWT + k * L.outp + v * kLanes, load(dWT + k * L.outp + v * kLanes) + acc[v]);
    }
}

void weight_grad(const float* a, int64_t lda, const float* g, int64_t rows, const Layer& L, float* dWT) {
    switch (L.outp / kLanes) {
        case 1: weight_grad_rows<1>(a, lda, g, rows, L, dWT); break;
        case 2: weight_grad_rows<2>(a, lda, g, rows, L, dWT); break;
        case 3: weight_grad_rows<3>(a, lda, g, rows, L, dWT); break;
        default: weight_grad_rows<4>(a, lda, g, rows, L, dWT); break;
    }
}

// ga[r][0:inp] = sum_o g[r][o] * W[o][0:inp], times sigmoid(zprev[r]) when zprev is given
// (the softplus before this layer).
template <int V>
void input_grad_rows(const float* g, int64_t rows, const Layer& L, const float* zprev, float* ga) {
    int64_t r = 0;
    auto finish = [&](int64_t row, vf* acc) {
        for (int v = 0; v < V; ++v) {
            vf d = acc[v];
            if (zprev) d *= sigmoid(load(zprev + row * L.inp + v * kLanes));
            store(ga + row * L.inp + v * kLanes, d);
        }
    };
    for (; r + 4 <= rows; r += 4) {
        vf acc[4][V] = {};
        for (int64_t o = 0; o < L.out; ++o) {
            vf w[V];
            for (int v = 0; v < V; ++v) w[v] = load(L.W.data() + o * L.inp + v * kLanes);
            for (int i = 0; i < 4; ++i) {
                const float s = g[(r + i) * L.outp + o];
                for (int v = 0; v < V; ++v) acc[i][v] += s * w[v];
            }
        }
        for (int i = 0; i < 4; ++i) finish(r + i, acc[i]);
    }
    for (; r < rows; ++r) {
        vf acc[V] = {};
        for (int64_t o = 0; o < L.out; ++o)
            for (int v = 0; v < V; ++v) acc[v] += g[r * L.outp + o] * load(L.W.data() + o * L.inp + v * kLanes);
        finish(r, acc);
    }
}

void input_grad(const float* g, int64_t rows, const Layer& L, const float* zprev, float* ga) {
    switch (L.inp / kLanes) {
        case 1: input_grad_rows<1>(g, rows, L, zprev, ga); break;
        case 2: input_grad_rows<2>(g, rows, L, zprev, ga); break;
        case 3: input_grad_rows<3>(g, rows, L, zprev, ga); break;
        default: input_grad_rows<4>(g, rows, L, zprev, ga); break;
    }
}

void check_x(const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
                "mlp_cpu: x must be a contiguous float32 CPU [points, features] tensor");
}

}  // namespace

// x [P, in] -> out [P, out of the last layer], squashed from column squash_from on.
at::Tensor mlp_softplus_forward(const at::Tensor& x, std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                                int64_t squash_from, double squash_scale, double squash_shift) {
    check_x(x);
    const auto layers = make_layers(weights, biases, x.size(1));
    const Squash sq{squash_from, static_cast<float>(squash_scale), static_cast<float>(squash_shift)};
    const int64_t P = x.size(0), out_features = layers.back().out, outp = layers.back().outp;
    auto out = at::empty({P, out_features}, x.options());
    const float* xp = x.data_ptr<float>();
    float* op = out.data_ptr<float>();
    const int64_t tiles = (P + kTile - 1) / kTile;
    at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
        FlushDenormals flush;
        TileBuffers t(layers.size());
        for (int64_t ti = t0; ti < t1; ++ti) {
            const int64_t p0 = ti * kTile, rows = std::min<int64_t>(kTile, P - p0);
            forward_tile(layers, xp + p0 * layers[0].in, rows, t);
            float* z = t.z.back().data();
            squash_tile(z, rows, outp, sq);
            for (int64_t r = 0; r < rows; ++r) std::copy_n(z + r * outp, out_features, op + (p0 + r) * out_features);
        }
    });
    return out;
}

// Gradients of mlp_softplus_forward (same squash) from grad_out [P, out]: (dx [P, in] or an empty tensor
// when not need_dx, then dW_l [out, in] for every layer, then db_l [out] for every layer).
std::vector<at::Tensor> mlp_softplus_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                              std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
                                              bool need_dx, int64_t squash_from, double squash_scale,
                                              double squash_shift) {
    check_x(x);
    const auto layers = make_layers(weights, biases, x.size(1));
    const Squash sq{squash_from, static_cast<float>(squash_scale), static_cast<float>(squash_shift)};
    const int64_t P = x.size(0), in = x.size(1), out_features = layers.back().out;
    TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == P && grad_out.size(1) == out_features,
                "mlp_cpu: grad_out must be [", P, ", ", out_features, "], got ", grad_out.sizes());
    const auto go = grad_out.to(at::kFloat).contiguous();
    // Per block: every layer's dWT [in][outp], then its db [outp].
    std::vector<int64_t> offset;
    int64_t per_block = 0;
    for (const Layer& L : layers) {
        offset.push_back(per_block);
        per_block += L.in * L.outp + L.outp;
    }
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    std::vector<float> partial(static_cast<size_t>(blocks * per_block), 0.f);
    auto dx = need_dx ? at::empty({P, in}, x.options()) : at::empty({0}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* gp = go.data_ptr<float>();
    float* dxp = need_dx ? dx.data_ptr<float>() : nullptr;
    const size_t nl = layers.size();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        FlushDenormals flush;
        TileBuffers t(nl);
        std::vector<float> g(kTile * kMaxWidth), ga(kTile * kMaxWidth);
        for (int64_t blk = b0; blk < b1; ++blk) {
            float* acc = partial.data() + blk * per_block;
            for (int64_t p0 = blk * kBlock; p0 < std::min(P, (blk + 1) * kBlock); p0 += kTile) {
                const int64_t rows = std::min<int64_t>(kTile, P - p0);
                const float* xt = xp + p0 * in;
                forward_tile(layers, xt, rows, t);
                const Layer& last = layers.back();
                std::fill(g.begin(), g.end(), 0.f);
                for (int64_t r = 0; r < rows; ++r) std::copy_n(gp + (p0 + r) * out_features, out_features,
                                                               g.data() + r * last.outp);
                squash_grad_tile(t.z.back().data(), g.data(), rows, last.outp, sq);
                for (size_t l = nl; l-- > 0;) {
                    const Layer& L = layers[l];
                    const float* a = l == 0 ? xt : t.h[l - 1].data();
                    weight_grad(a, l == 0 ? in : layers[l - 1].outp, g.data(), rows, L, acc + offset[l]);
                    float* db = acc + offset[l] + L.in * L.outp;
                    for (int64_t r = 0; r < rows; ++r)
                        for (int64_t o = 0; o < L.outp; o += kLanes)
                            store(db + o, load(db + o) + load(g.data() + r * L.outp + o));
                    if (l == 0 && !need_dx) break;
                    input_grad(g.data(), rows, L, l == 0 ? nullptr : t.z[l - 1].data(), ga.data());
                    if (l == 0) {
                        for (int64_t r = 0; r < rows; ++r) std::copy_n(ga.data() + r * L.inp, in, dxp + (p0 + r) * in);
                    } else {
                        std::swap(g, ga);
                    }
                }
            }
        }
    });
    // Block partials, summed in block order, into dW [out][in] and db [out].
    std::vector<at::Tensor> result{dx};
    std::vector<at::Tensor> dbs;
    for (size_t l = 0; l < nl; ++l) {
        const Layer& L = layers[l];
        std::vector<float> sum(L.in * L.outp + L.outp, 0.f);
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const float* src = partial.data() + blk * per_block + offset[l];
            for (size_t i = 0; i < sum.size(); ++i) sum[i] += src[i];
        }
        auto dW = at::empty({L.out, L.in}, x.options());
        auto db = at::empty({L.out}, x.options());
        float* dWp = dW.data_ptr<float>();
        for (int64_t o = 0; o < L.out; ++o)
            for (int64_t k = 0; k < L.in; ++k) dWp[o * L.in + k] = sum[k * L.outp + o];
        std::copy_n(sum.data() + L.in * L.outp, L.out, db.data_ptr<float>());
        result.push_back(dW);
        dbs.push_back(db);
    }
    result.insert(result.end(), dbs.begin(), dbs.end());
    return result;
}

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("mlp_softplus_forward", &mlp_softplus_forward);  // MLP with softplus between layers (CPU)
    m.def("mlp_softplus_backward", &mlp_softplus_backward);  // its gradients, forward recomputed per tile (CPU)
}
