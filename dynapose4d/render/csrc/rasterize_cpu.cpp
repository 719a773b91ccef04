// CPU compositing of projected 3D Gaussians with gsplat 1.5.3's numbers (classic mode, not packed).
//
// Three entry points, called from dynapose4d/render/cpu_kernel.py:
//   bin_gaussians   tile binning: each visible Gaussian goes into every 16x16 tile its radius box touches
//                   (gsplat's isect_tiles arithmetic); each tile's list is sorted front to back by depth
//                   (ties by Gaussian index, as gsplat's stable radix sort).
//   composite_fwd   per-pixel front-to-back compositing with gsplat's constants and early stop; keeps the
//                   final transmittance and the number of Gaussians walked per pixel for the backward pass.
//   composite_bwd   back-to-front walk (gsplat's RasterizeToPixels3DGSBwd), gradients for means2d, conics,
//                   colours and opacities, written per intersection, then summed per Gaussian.
//
// Work is spread over tiles with at::parallel_for plus an atomic work queue (heaviest tiles first).
// Within a tile the loop runs Gaussian-major: each Gaussian touches only the pixels of the tile inside the
// box where its alpha can reach 1/255 (a conservative bound); every other pixel would skip it anyway.

// Only light headers (not torch/extension.h): the extension builds in seconds. Registered as torch.ops.dynapose4d_raster.*

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;  // gsplat ALPHA_THRESHOLD
constexpr double kMaxAlpha = 0.999;              // gsplat 1.5.3 alpha clamp
constexpr double kTransmittanceStop = 1e-4;      // stop (exclusive) when the next T <= this

// Pixel box of one Gaussian (image pixel indices, [x0, x1) x [y0, y1)) and the sigma above which its alpha is
// surely below the threshold.
struct Box {
  int32_t x0, x1, y0, y1;
  double sigma_max;
};

Box gaussian_box(double mx, double my, double a, double b, double c, double o, int64_t W, int64_t H) {
  Box box{0, 0, 0, 0, std::numeric_limits<double>::infinity()};
  if (!(o > 0.0) || !std::isfinite(mx) || !std::isfinite(my)) return box;  // no pixel can pass
  // alpha >= 1/255 needs sigma <= log(255 o); 1e-3 of slack covers float rounding (exp(-1e-3) = 0.999).
  const double s0 = std::max(std::log(o / kAlphaThreshold), 0.0) + 1e-3;
  box.sigma_max = s0;
  const double det = a * c - b * b;
  if (!(det > 0.0) || !(a > 0.0) || !(c > 0.0) || !std::isfinite(det)) {
    box.x0 = 0; box.x1 = static_cast<int32_t>(W); box.y0 = 0; box.y1 = static_cast<int32_t>(H);
    box.sigma_max = std::numeric_limits<double>::infinity();
    return box;
  }
  // {d : 0.5 d^T Q d <= s0} has half-extents sqrt(2 s0 (Q^-1)_xx), sqrt(2 s0 (Q^-1)_yy).
  const double hx = std::sqrt(2.0 * s0 * c / det) * 1.001 + 1e-3;
  const double hy = std::sqrt(2.0 * s0 * a / det) * 1.001 + 1e-3;
  // pixel centre j + 0.5 within [m - h, m + h]
  auto lo = [](double v, int64_t n) {
    return static_cast<int32_t>(std::min<double>(std::max<double>(std::ceil(v - 0.5), 0.0), double(n)));
  };
  auto hi = [](double v, int64_t n) {
    return static_cast<int32_t>(std::min<double>(std::max<double>(std::floor(v - 0.5) + 1.0, 0.0), double(n)));
  };
  box.x0 = lo(mx - hx, W);
  box.x1 = hi(mx + hx, W);
  box.y0 = lo(my - hy, H);
  box.y1 = hi(my + hy, H);
  return box;
}

// Runs fn(work_item) for every item of `order`, on at::get_num_threads() threads, dynamic scheduling.
template <typename F>
void parallel_queue(const std::vector<int64_t>& order, F fn) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  std::atomic<int64_t> next(0);
  const int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, n_threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      while (true) {
        const int64_t k = next.fetch_add(1);
        if (k >= n) break;
        fn(order[k]);
      }
    }
  });
}

// Work items (camera * n_tiles + tile) sorted by decreasing number of intersections.
std::vector<int64_t> tile_order(const int32_t* offsets, int64_t n_items) {
  std::vector<int64_t> order(n_items);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) {
    return offsets[p + 1] - offsets[p] > offsets[q + 1] - offsets[q];
  });
  return order;
}

template <typename scalar_t>
std::vector<Box> make_boxes(const scalar_t* means2d, const scalar_t* conics, const scalar_t* opac,
                            const int32_t* offsets, const int32_t* ids, int64_t CN, int64_t n_isects,
                            int64_t W, int64_t H) {
  std::vector<Box> boxes(CN);
  std::vector<uint8_t> used(CN, 0);
  for (int64_t k = 0; k < n_isects; ++k) used[ids[k]] = 1;
  at::parallel_for(0, CN, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      if (!used[g]) continue;
      boxes[g] = gaussian_box(means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1],
                              conics[3 * g + 2], opac[g], W, H);
    }
  });
  (void)offsets;
  return boxes;
}

}  // namespace

// Tile binning. means2d [C, N, 2], radii [C, N, 2] int32, depths [C, N].
// Returns tile_offsets [C * T + 1] int32 and flatten_ids [n_isects] int32 (= c * N + g), T = tiles per image.
std::vector<at::Tensor> bin_gaussians(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                                      int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be [C, N, 2]");
  TORCH_CHECK(radii.scalar_type() == at::kInt, "radii must be int32");
  const int64_t C = means2d.size(0), N = means2d.size(1);
  const int64_t tw = (width + tile_size - 1) / tile_size, th = (height + tile_size - 1) / tile_size;
  const int64_t T = tw * th;
  auto m2 = means2d.contiguous().to(at::kFloat);  // gsplat bins in float32
  auto dp = depths.contiguous().to(at::kDouble);
  auto rd = radii.contiguous();
  const float* m = m2.data_ptr<float>();
  const double* d = dp.data_ptr<double>();
  const int32_t* r = rd.data_ptr<int32_t>();

  std::vector<int32_t> tmin_x(C * N), tmax_x(C * N), tmin_y(C * N), tmax_y(C * N);
  std::vector<std::vector<int32_t>> sorted(C);
  std::vector<int64_t> counts(C * T + 1, 0);
  const float ts = static_cast<float>(tile_size);
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<std::pair<double, int32_t>> keys;
      keys.reserve(N);
      for (int64_t g = 0; g < N; ++g) {
        const int64_t i = c * N + g;
        tmin_x[i] = tmax_x[i] = tmin_y[i] = tmax_y[i] = 0;
        if (r[2 * i] <= 0 || r[2 * i + 1] <= 0) continue;
        const float mx = m[2 * i], my = m[2 * i + 1];
        if (!std::isfinite(mx) || !std::isfinite(my)) continue;
        const float trx = static_cast<float>(r[2 * i]) / ts, try_ = static_cast<float>(r[2 * i + 1]) / ts;
        const float tx = mx / ts, ty = my / ts;
        auto clampi = [](float v, int64_t n) {
          return static_cast<int32_t>(std::min<float>(std::max<float>(v, 0.0f), static_cast<float>(n)));
        };
        tmin_x[i] = clampi(std::floor(tx - trx), tw);
        tmin_y[i] = clampi(std::floor(ty - try_), th);
        tmax_x[i] = clampi(std::ceil(tx + trx), tw);
        tmax_y[i] = clampi(std::ceil(ty + try_), th);
        if (tmax_x[i] <= tmin_x[i] || tmax_y[i] <= tmin_y[i]) continue;
        // gsplat sorts by the float32 depth (bits of a positive float order like the value)
        keys.emplace_back(static_cast<double>(static_cast<float>(d[i])), static_cast<int32_t>(g));
      }
      std::sort(keys.begin(), keys.end());
      sorted[c].resize(keys.size());
      for (size_t k = 0; k < keys.size(); ++k) sorted[c][k] = keys[k].second;
      for (int32_t g : sorted[c]) {
        const int64_t i = c * N + g;
        for (int32_t y = tmin_y[i]; y < tmax_y[i]; ++y)
          for (int32_t x = tmin_x[i]; x < tmax_x[i]; ++x) counts[c * T + y * tw + x + 1] += 1;
      }
    }
  });
  for (int64_t k = 0; k < C * T; ++k) counts[k + 1] += counts[k];
  const int64_t n_isects = counts[C * T];
  TORCH_CHECK(n_isects < std::numeric_limits<int32_t>::max(), "too many tile intersections");
  auto offsets = at::empty({C * T + 1}, at::kInt);
  auto ids = at::empty({n_isects}, at::kInt);
  int32_t* off = offsets.data_ptr<int32_t>();
  int32_t* out = ids.data_ptr<int32_t>();
  for (int64_t k = 0; k <= C * T; ++k) off[k] = static_cast<int32_t>(counts[k]);
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<int64_t> cursor(counts.begin() + c * T, counts.begin() + (c + 1) * T);
      for (int32_t g : sorted[c]) {
        const int64_t i = c * N + g;
        for (int32_t y = tmin_y[i]; y < tmax_y[i]; ++y)
          for (int32_t x = tmin_x[i]; x < tmax_x[i]; ++x) out[cursor[y * tw + x]++] = static_cast<int32_t>(i);
      }
    }
  });
  return {offsets, ids};
}

namespace {

template <typename scalar_t>
void fwd_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
              const at::Tensor& opacities, const std::optional<at::Tensor>& backgrounds,
              const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, int64_t W, int64_t H,
              int64_t ts, at::Tensor& render, at::Tensor& alphas, at::Tensor& trans, at::Tensor& last) {
  const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(2);
  const int64_t tw = (W + ts - 1) / ts, th = (H + ts - 1) / ts, T = tw * th;
  const scalar_t* m = means2d.data_ptr<scalar_t>();
  const scalar_t* q = conics.data_ptr<scalar_t>();
  const scalar_t* col = colors.data_ptr<scalar_t>();
  const scalar_t* op = opacities.data_ptr<scalar_t>();
  const scalar_t* bg = backgrounds.has_value() ? backgrounds->data_ptr<scalar_t>() : nullptr;
  const int32_t* off = tile_offsets.data_ptr<int32_t>();
  const int32_t* ids = flatten_ids.data_ptr<int32_t>();
  scalar_t* out_c = render.data_ptr<scalar_t>();
  scalar_t* out_a = alphas.data_ptr<scalar_t>();
  scalar_t* out_t = trans.data_ptr<scalar_t>();
  int32_t* out_l = last.data_ptr<int32_t>();
  const std::vector<Box> boxes = make_boxes(m, q, op, off, ids, C * N, flatten_ids.numel(), W, H);

  const scalar_t thr = static_cast<scalar_t>(kAlphaThreshold);
  const scalar_t amax = static_cast<scalar_t>(kMaxAlpha);
  const scalar_t tstop = static_cast<scalar_t>(kTransmittanceStop);
  const scalar_t half = static_cast<scalar_t>(0.5);
  const scalar_t one = static_cast<scalar_t>(1);

  parallel_queue(tile_order(off, C * T), [&](int64_t item) {
    const int64_t c = item / T, t = item % T;
    const int64_t px0 = (t % tw) * ts, py0 = (t / tw) * ts;
    const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
    const int64_t npix = (px1 - px0) * (py1 - py0);
    std::vector<scalar_t> Tp(ts * ts, one), acc(ts * ts * D, scalar_t(0));
    std::vector<int32_t> lastp(ts * ts, 0);
    std::vector<uint8_t> done(ts * ts, 0);
    int64_t ndone = 0;
    const int32_t start = off[item], end = off[item + 1];
    for (int32_t j = start; j < end && ndone < npix; ++j) {
      const int32_t g = ids[j];
      const Box& bx = boxes[g];
      const int32_t x0 = std::max<int32_t>(bx.x0, px0), x1 = std::min<int32_t>(bx.x1, px1);
      const int32_t y0 = std::max<int32_t>(bx.y0, py0), y1 = std::min<int32_t>(bx.y1, py1);
      if (x0 >= x1 || y0 >= y1) continue;
      const scalar_t mx = m[2 * g], my = m[2 * g + 1];
      const scalar_t qa = q[3 * g], qb = q[3 * g + 1], qc = q[3 * g + 2];
      const scalar_t o = op[g];
      const scalar_t smax = static_cast<scalar_t>(bx.sigma_max);
      const scalar_t* cg = col + static_cast<int64_t>(g) * D;
      for (int32_t y = y0; y < y1; ++y) {
        const scalar_t dy = my - (static_cast<scalar_t>(y) + half);
        const int64_t row = (y - py0) * ts - px0;
        for (int32_t x = x0; x < x1; ++x) {
          const int64_t p = row + x;
          if (done[p]) continue;
          const scalar_t dx = mx - (static_cast<scalar_t>(x) + half);
          const scalar_t sigma = half * (qa * dx * dx + qc * dy * dy) + qb * dx * dy;
          if (sigma > smax) continue;  // alpha < 1/255 for sure
          const scalar_t alpha = std::min(amax, o * std::exp(-sigma));
          if (sigma < scalar_t(0) || alpha < thr) continue;
          const scalar_t next_T = Tp[p] * (one - alpha);
          if (next_T <= tstop) {
            done[p] = 1;
            ++ndone;
            continue;
          }
          const scalar_t vis = alpha * Tp[p];
          scalar_t* a = acc.data() + p * D;
          for (int64_t k = 0; k < D; ++k) a[k] += cg[k] * vis;
          Tp[p] = next_T;
          lastp[p] = j - start + 1;
        }
      }
    }
    for (int64_t y = py0; y < py1; ++y) {
      for (int64_t x = px0; x < px1; ++x) {
        const int64_t p = (y - py0) * ts + (x - px0);
        const int64_t pix = (c * H + y) * W + x;
        out_a[pix] = one - Tp[p];
        out_t[pix] = Tp[p];
        out_l[pix] = lastp[p];
        for (int64_t k = 0; k < D; ++k) {
          out_c[pix * D + k] = bg == nullptr ? acc[p * D + k] : acc[p * D + k] + Tp[p] * bg[c * D + k];
        }
      }
    }
  });
}

template <typename scalar_t>
void bwd_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
              const at::Tensor& opacities, const std::optional<at::Tensor>& backgrounds,
              const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, int64_t W, int64_t H, int64_t ts,
              const at::Tensor& trans, const at::Tensor& last, const at::Tensor& v_render,
              const at::Tensor& v_alphas, at::Tensor& v_means2d, at::Tensor& v_conics, at::Tensor& v_colors,
              at::Tensor& v_opacities) {
  const int64_t C = means2d.size(0), N = means2d.size(1), D = colors.size(2);
  const int64_t tw = (W + ts - 1) / ts, th = (H + ts - 1) / ts, T = tw * th;
  const int64_t n_isects = flatten_ids.numel();
  const int64_t S = 6 + D;  // per-intersection gradient record: xy(2), conic(3), opacity(1), colour(D)
  const scalar_t* m = means2d.data_ptr<scalar_t>();
  const scalar_t* q = conics.data_ptr<scalar_t>();
  const scalar_t* col = colors.data_ptr<scalar_t>();
  const scalar_t* op = opacities.data_ptr<scalar_t>();
  const scalar_t* bg = backgrounds.has_value() ? backgrounds->data_ptr<scalar_t>() : nullptr;
  const int32_t* off = tile_offsets.data_ptr<int32_t>();
  const int32_t* ids = flatten_ids.data_ptr<int32_t>();
  const scalar_t* tfin = trans.data_ptr<scalar_t>();
  const int32_t* lst = last.data_ptr<int32_t>();
  const scalar_t* vr = v_render.data_ptr<scalar_t>();
  const scalar_t* va = v_alphas.data_ptr<scalar_t>();
  const std::vector<Box> boxes = make_boxes(m, q, op, off, ids, C * N, n_isects, W, H);
  std::vector<scalar_t> isect_grads(n_isects * S, scalar_t(0));

  const scalar_t thr = static_cast<scalar_t>(kAlphaThreshold);
  const scalar_t amax = static_cast<scalar_t>(kMaxAlpha);
  const scalar_t half = static_cast<scalar_t>(0.5);
  const scalar_t one = static_cast<scalar_t>(1);

  parallel_queue(tile_order(off, C * T), [&](int64_t item) {
    const int32_t start = off[item], end = off[item + 1];
    if (start == end) return;
    const int64_t c = item / T, t = item % T;
    const int64_t px0 = (t % tw) * ts, py0 = (t / tw) * ts;
    const int64_t px1 = std::min(px0 + ts, W), py1 = std::min(py0 + ts, H);
    const int64_t P = ts * ts;
    std::vector<scalar_t> Tp(P, one), Tf(P, one), buf(P * D, scalar_t(0)), vc(P * D, scalar_t(0));
    std::vector<scalar_t> vA(P, scalar_t(0)), bgv(P, scalar_t(0));
    std::vector<int32_t> lastp(P, 0);
    int32_t max_last = 0;
    for (int64_t y = py0; y < py1; ++y) {
      for (int64_t x = px0; x < px1; ++x) {
        const int64_t p = (y - py0) * ts + (x - px0);
        const int64_t pix = (c * H + y) * W + x;
        Tp[p] = Tf[p] = tfin[pix];
        lastp[p] = lst[pix];
        max_last = std::max(max_last, lastp[p]);
        vA[p] = va[pix];
        scalar_t s = 0;
        for (int64_t k = 0; k < D; ++k) {
          vc[p * D + k] = vr[pix * D + k];
          if (bg != nullptr) s += bg[c * D + k] * vr[pix * D + k];
        }
        bgv[p] = s;
      }
    }
    std::vector<scalar_t> vrgb(D);
    for (int32_t jj = max_last - 1; jj >= 0; --jj) {
      const int32_t j = start + jj;
      const int32_t g = ids[j];
      const Box& bx = boxes[g];
      const int32_t x0 = std::max<int32_t>(bx.x0, px0), x1 = std::min<int32_t>(bx.x1, px1);
      const int32_t y0 = std::max<int32_t>(bx.y0, py0), y1 = std::min<int32_t>(bx.y1, py1);
      if (x0 >= x1 || y0 >= y1) continue;
      const scalar_t mx = m[2 * g], my = m[2 * g + 1];
      const scalar_t qa = q[3 * g], qb = q[3 * g + 1], qc = q[3 * g + 2];
      const scalar_t o = op[g];
      const scalar_t smax = static_cast<scalar_t>(bx.sigma_max);
      const scalar_t* cg = col + static_cast<int64_t>(g) * D;
      scalar_t v_x = 0, v_y = 0, v_a = 0, v_b = 0, v_c = 0, v_o = 0;
      std::fill(vrgb.begin(), vrgb.end(), scalar_t(0));
      bool any = false;
      for (int32_t y = y0; y < y1; ++y) {
        const scalar_t dy = my - (static_cast<scalar_t>(y) + half);
        const int64_t row = (y - py0) * ts - px0;
        for (int32_t x = x0; x < x1; ++x) {
          const int64_t p = row + x;
          if (jj >= lastp[p]) continue;
          const scalar_t dx = mx - (static_cast<scalar_t>(x) + half);
          const scalar_t sigma = half * (qa * dx * dx + qc * dy * dy) + qb * dx * dy;
          if (sigma > smax) continue;
          const scalar_t vis = std::exp(-sigma);
          const scalar_t alpha = std::min(amax, o * vis);
          if (sigma < scalar_t(0) || alpha < thr) continue;
          any = true;
          const scalar_t ra = one / (one - alpha);
          Tp[p] *= ra;
          const scalar_t Tcur = Tp[p];
          const scalar_t fac = alpha * Tcur;
          const scalar_t* vcp = vc.data() + p * D;
          scalar_t* bp = buf.data() + p * D;
          scalar_t v_alpha = 0;
          for (int64_t k = 0; k < D; ++k) {
            vrgb[k] += fac * vcp[k];
            v_alpha += (cg[k] * Tcur - bp[k] * ra) * vcp[k];
          }
          v_alpha += Tf[p] * ra * vA[p];
          if (bg != nullptr) v_alpha += -Tf[p] * ra * bgv[p];
          if (o * vis <= amax) {
            const scalar_t v_sigma = -o * vis * v_alpha;
            v_a += half * v_sigma * dx * dx;
            v_b += v_sigma * dx * dy;
            v_c += half * v_sigma * dy * dy;
            v_x += v_sigma * (qa * dx + qb * dy);
            v_y += v_sigma * (qb * dx + qc * dy);
            v_o += vis * v_alpha;
          }
          for (int64_t k = 0; k < D; ++k) bp[k] += cg[k] * fac;
        }
      }
      if (!any) continue;
      scalar_t* rec = isect_grads.data() + static_cast<int64_t>(j) * S;
      rec[0] = v_x; rec[1] = v_y; rec[2] = v_a; rec[3] = v_b; rec[4] = v_c; rec[5] = v_o;
      for (int64_t k = 0; k < D; ++k) rec[6 + k] = vrgb[k];
    }
  });

  // Sum per Gaussian (deterministic: intersections of one camera in order, cameras in parallel).
  scalar_t* gm = v_means2d.data_ptr<scalar_t>();
  scalar_t* gq = v_conics.data_ptr<scalar_t>();
  scalar_t* gc = v_colors.data_ptr<scalar_t>();
  scalar_t* go = v_opacities.data_ptr<scalar_t>();
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      for (int64_t j = off[c * T]; j < off[(c + 1) * T]; ++j) {
        const int64_t g = ids[j];
        const scalar_t* rec = isect_grads.data() + j * S;
        gm[2 * g] += rec[0];
        gm[2 * g + 1] += rec[1];
        gq[3 * g] += rec[2];
        gq[3 * g + 1] += rec[3];
        gq[3 * g + 2] += rec[4];
        go[g] += rec[5];
        for (int64_t k = 0; k < D; ++k) gc[g * D + k] += rec[6 + k];
      }
    }
  });
  (void)N;
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opacities, const std::optional<at::Tensor>& backgrounds) {
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be [C, N, 2]");
  const auto C = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(conics.sizes() == at::IntArrayRef({C, N, 3}), "conics must be [C, N, 3]");
  TORCH_CHECK(colors.dim() == 3 && colors.size(0) == C && colors.size(1) == N, "colors must be [C, N, D]");
  TORCH_CHECK(opacities.sizes() == at::IntArrayRef({C, N}), "opacities must be [C, N]");
  for (const auto* t : {&means2d, &conics, &colors, &opacities}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "inputs must be contiguous CPU tensors");
    TORCH_CHECK(t->scalar_type() == means2d.scalar_type(), "inputs must share one dtype");
  }
  if (backgrounds.has_value()) {
    TORCH_CHECK(backgrounds->sizes() == at::IntArrayRef({C, colors.size(2)}), "backgrounds must be [C, D]");
    TORCH_CHECK(backgrounds->is_contiguous() && backgrounds->scalar_type() == means2d.scalar_type(),
                "backgrounds must be contiguous, same dtype");
  }
}

}  // namespace

// Forward compositing. Returns render [C, H, W, D] (background included), alphas [C, H, W, 1],
// final transmittance [C, H, W] and the number of list entries walked per pixel [C, H, W] int32.
std::vector<at::Tensor> composite_fwd(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                      const at::Tensor& opacities, const std::optional<at::Tensor>& backgrounds,
                                      const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
                                      int64_t width, int64_t height, int64_t tile_size) {
  check_inputs(means2d, conics, colors, opacities, backgrounds);
  const auto C = means2d.size(0), D = colors.size(2);
  auto opts = means2d.options();
  auto render = at::empty({C, height, width, D}, opts);
  auto alphas = at::empty({C, height, width, 1}, opts);
  auto trans = at::empty({C, height, width}, opts);
  auto last = at::empty({C, height, width}, opts.dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_fwd", [&] {
    fwd_impl<scalar_t>(means2d, conics, colors, opacities, backgrounds, tile_offsets, flatten_ids, width, height,
                       tile_size, render, alphas, trans, last);
  });
  return {render, alphas, trans, last};
}

// Backward compositing. Returns v_means2d [C, N, 2], v_conics [C, N, 3], v_colors [C, N, D], v_opacities [C, N].
std::vector<at::Tensor> composite_bwd(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                                      const at::Tensor& opacities, const std::optional<at::Tensor>& backgrounds,
                                      const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
                                      int64_t width, int64_t height, int64_t tile_size, const at::Tensor& trans,
                                      const at::Tensor& last, const at::Tensor& v_render,
                                      const at::Tensor& v_alphas) {
  check_inputs(means2d, conics, colors, opacities, backgrounds);
  TORCH_CHECK(v_render.is_contiguous() && v_alphas.is_contiguous(), "output grads must be contiguous");
  auto v_means2d = at::zeros_like(means2d);
  auto v_conics = at::zeros_like(conics);
  auto v_colors = at::zeros_like(colors);
  auto v_opacities = at::zeros_like(opacities);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_bwd", [&] {
    bwd_impl<scalar_t>(means2d, conics, colors, opacities, backgrounds, tile_offsets, flatten_ids, width, height,
                       tile_size, trans, last, v_render, v_alphas, v_means2d, v_conics, v_colors, v_opacities);
  });
  return {v_means2d, v_conics, v_colors, v_opacities};
}

TORCH_LIBRARY(dynapose4d_raster, m) {
  m.def("bin_gaussians", &bin_gaussians);
  m.def("composite_fwd", &composite_fwd);
  m.def("composite_bwd", &composite_bwd);
}
