// Split-KV decode attention for CPUs: one new query per sequence over a KV cache, in one pass.
//
// softmax(q kᵀ · scale) v (Vaswani et al. 2017, eq. 1; scale 1/sqrt(head_dim) unless given) for the query
// heads that share a KV head (Ainslie et al. 2023, GQA), read straight from the cache: K and V are never
// copied, upcast or expanded per query head. V may be narrower than K and a view of K's rows: MLA's
// absorbed form (DeepSeek-AI 2024, DeepSeek-V2 §2.1) scores every head against one latent of d_c + d_h^R
// columns and takes its first d_c columns as values. Each (sequence, KV head) row is cut into splits of positions that run
// on different threads (Dao et al. 2023, "Flash-Decoding for long-context inference"); a split
// walks its positions in blocks small enough for the L1 cache and keeps a running softmax (Milakov
// & Gimelshein 2018, "Online normalizer calculation for softmax"): per query head a running max m,
// a running denominator l and an unnormalised float32 output. The splits are merged at the end by
// rescaling each with exp(m_split - m_max).
//
// Every cache element is read from memory once, widened to float32 in registers and multiplied with
// all the query heads of its group while it is there: the group's heads reuse each element from a
// register, which keeps GQA and MQA memory-bound on a CPU.
// While a block is computed the next one is prefetched, so that reading memory and computing overlap.
//
// The same kernel reads a paged cache through a block table (attnbench::paged_decode_attention), each
// sequence over its own span of positions.
//
// Registered as the operators attnbench::decode_attention and attnbench::paged_decode_attention;
// harness/model/native.py builds and loads them.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

// ---- Vectors --------------------------------------------------------------------------------------

// float32 lanes per vector: one 256-bit register where the CPU has them (a GCC/Clang vector
// extension; the compiler splits it on narrower CPUs).
constexpr int kLanes = 8;
// Elements per step along head_dim: two vectors. head_dim must be a multiple of it.
constexpr int kStep = 2 * kLanes;

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef uint32_t VecU32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef int32_t VecI32 __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Loads and stores go through memcpy: cache rows are only element-aligned.
inline Vec load_vec(const float* src) {
  Vec out;
  std::memcpy(&out, src, sizeof(Vec));
  return out;
}

inline void store_vec(float* dst, Vec value) { std::memcpy(dst, &value, sizeof(Vec)); }

inline Vec broadcast(float value) { return Vec{value, value, value, value, value, value, value, value}; }

template <typename To, typename From>
inline To bit_cast_vec(From value) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &value, sizeof(To));
  return out;
}

inline float sum_lanes(Vec value) {
  float sum = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) sum += value[lane];
  return sum;
}

// Lane i of the result is the sum of the lanes of a[i] (a horizontal-add tree: 8 sums in 7 adds).
inline Vec sum_lanes8(const Vec* a) {
  // pairs(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5, x6+x7, y4+y5, y6+y7]
  auto pairs = [](Vec x, Vec y) {
    return __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const Vec low = pairs(pairs(a[0], a[1]), pairs(a[2], a[3]));   // a0..a3: lanes 0-3 low halves, 4-7 high
  const Vec high = pairs(pairs(a[4], a[5]), pairs(a[6], a[7]));  // the same for a4..a7
  return __builtin_shufflevector(low, high, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(low, high, 4, 5, 6, 7, 12, 13, 14, 15);
}

// Lane i of the result is lane i ^ S of v (S a power of two below kLanes).
template <int S>
inline Vec xor_lanes(Vec v) {
  return __builtin_shufflevector(v, v, 0 ^ S, 1 ^ S, 2 ^ S, 3 ^ S, 4 ^ S, 5 ^ S, 6 ^ S, 7 ^ S);
}

// With lane j holding head j % GB (GB a power of two dividing kLanes): the lanes of each head combined
// by op (max, sum), the result in every lane of that head.
template <int GB, typename Op>
inline Vec across_heads(Vec v, Op op) {
  if constexpr (GB < kLanes) {
    v = op(v, xor_lanes<GB>(v));
    return across_heads<2 * GB>(v, op);
  }
  return v;
}

// x[j % GB] in lane j.
template <int GB>
inline Vec replicate(const float* x) {
  Vec out;
  for (int lane = 0; lane < kLanes; ++lane) out[lane] = x[lane % GB];
  return out;
}

// e^x per lane, to about one float32 ulp: e^x = 2^n · e^r with n = round(x / ln 2) and
// |r| <= ln 2 / 2, e^r by its Taylor series to r^6 (truncation error r^7/7! < 1.3e-7).
// x is clamped to [-87, 88], where 2^n stays a normal float32.
inline Vec exp_vec(Vec x) {
  x = x < -87.0f ? broadcast(-87.0f) : x;
  x = x > 88.0f ? broadcast(88.0f) : x;
  // Adding 1.5 · 2^23 rounds x / ln 2 to an integer held in the low mantissa bits.
  const Vec shifted = x * 1.44269504088896341f + 12582912.0f;
  const Vec n = shifted - 12582912.0f;
  const VecI32 n_int = bit_cast_vec<VecI32>(shifted) - 0x4B400000;  // minus the bits of 1.5 · 2^23
  // ln 2 in two parts, so that n · ln2_high is exact
  const Vec r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  Vec poly = broadcast(1.0f / 720.0f);
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  return poly * bit_cast_vec<Vec>((n_int + 127) << 23);  // · 2^n
}

// ---- Cache elements as float32 ---------------------------------------------------------------------
//
// Sixteen cache elements become two float32 vectors in a lane order of the dtype's choosing, the
// cheapest to produce: float32 and float16 in order (0-7, 8-15); bfloat16 as even and odd elements,
// because a bfloat16 is the high half of a float32: read sixteen as eight 32-bit words, the odd ones
// are the words with the low half cleared and the even ones the words shifted up, two instructions
// for sixteen elements. The query is put into the same order once per call, the output is
// accumulated in it and put back at the end: dot products and sums do not depend on the order.

template <typename T>
struct Elements;

template <>
struct Elements<float> {
  static void load16(const float* src, Vec& first, Vec& second) {
    first = load_vec(src);
    second = load_vec(src + kLanes);
  }
  // Lane order of a 16-element step: position in the step of each of the two vectors' lanes.
  static int source_index(int slot) { return slot; }
};

template <>
struct Elements<c10::BFloat16> {
  static void load16(const c10::BFloat16* src, Vec& even, Vec& odd) {
    VecU32 words;
    std::memcpy(&words, src, sizeof(words));
    even = bit_cast_vec<Vec>(words << 16);
    odd = bit_cast_vec<Vec>(words & 0xFFFF0000u);
  }
  static int source_index(int slot) { return slot < kLanes ? 2 * slot : 2 * (slot - kLanes) + 1; }
};

template <>
struct Elements<c10::Half> {
  static void load16(const c10::Half* src, Vec& first, Vec& second) {
#if defined(__F16C__)
    // one instruction per eight elements where the CPU converts float16 itself (F16C, which -march=native
    // enables on x86 CPUs that have it). Measured against the element-by-element conversion below
    // (interleaved A/B, 4 layers x 32 MiB, 2 threads): 2.8x faster with four heads per KV head, 3.1x
    // with one (8.8 -> 24.9 and 9.9 -> 30.5 GB/s).
    __m128i low, high;
    std::memcpy(&low, src, sizeof(low));
    std::memcpy(&high, src + kLanes, sizeof(high));
    first = bit_cast_vec<Vec>(_mm256_cvtph_ps(low));
    second = bit_cast_vec<Vec>(_mm256_cvtph_ps(high));
#else
    float wide[kStep];
    for (int i = 0; i < kStep; ++i) wide[i] = static_cast<float>(src[i]);
    first = load_vec(wide);
    second = load_vec(wide + kLanes);
#endif
  }
  static int source_index(int slot) { return slot; }
};

// Pins two float32 cache vectors that GB > 1 query heads use in registers. Without it GCC folds their
// load into each head's multiply-add, loading them once per head, and then the loads (two 256-bit ones
// per cycle) rather than the multiply-adds set the pace. The other dtypes are widened in registers
// anyway. Measured in cache (1 thread, 4096 positions, float32): four heads per KV head 59 -> 37 ns per
// position, two 30 -> 27; bfloat16 unchanged with the values pinned and 4% slower with the keys.
template <int GB, typename T>
inline void pin_for_heads(Vec& first, Vec& second) {
#if defined(__x86_64__)
  if constexpr (GB > 1 && std::is_same_v<T, float>) {
    asm("" : "+x"(first));  // an empty instruction that takes and returns the vector in a register
    asm("" : "+x"(second));
  }
#endif
}

// ---- One block of positions for a tile of query heads -----------------------------------------------

// Positions per block: one vector of scores per query head, the block's K and V rows (and the next
// block's, prefetched) a few KiB of L1. A multiple of kLanes. Measured in interleaved A/B against 16
// and 32 (4 layers x 64-256 MiB, 2 threads): for bfloat16 8 was fastest by far, +17% with four query
// heads per KV head, +33-41% with one or two (34 GB/s, the read probe's rate); for float32 within
// -3..+12% of 32.
constexpr int64_t kBlock = 8;
// Bytes per cache line: the step of the prefetches.
constexpr int64_t kCacheLine = 64;
// Independent accumulators a tile keeps in flight: enough to cover the latency of fused multiply-adds
// on two pipes, few enough for 16 vector registers beside the operands.
constexpr int kChains = 8;
// Locality hint of the next-block prefetches: 0 (non-temporal), since each cache line is used once,
// in the block after its prefetch. Measured against the default hint (3) in interleaved A/B on
// 128-256 MiB caches, 2 threads, 32-position blocks: +2 to +9% for bfloat16 with one or two query
// heads per KV head, within the noise (a few %) for float32 and for four heads; with 8-position
// blocks, once, for bfloat16 MQA: +2%.
constexpr int kPrefetchLocality = 0;

// How a tile of GB query heads splits its kChains accumulators. With at most two heads, each head's
// two query vectors are held in registers, each position's K row is loaded once, and every (position,
// head) pair keeps one accumulator per half of a 16-element step. With four, the tile holds the K
// vectors of its positions and loads each query vector once per step, and every pair keeps a single
// accumulator taking both halves. Measured against one scheme for all (interleaved A/B, 128 MiB
// caches, 2 threads, 32-position blocks; not re-measured at 8): the second took MQA (4 heads)
// bfloat16 from 19.1 to 20.6 GB/s and lost 7-12% for 1 and 2 heads out of cache, where the first
// stays best.
template <int GB>
constexpr int kHalves = GB <= 2 ? 2 : 1;
// Positions per score tile.
template <int GB>
constexpr int kTilePositions = kChains / (GB * kHalves<GB>) > 0 ? kChains / (GB * kHalves<GB>) : 1;

// scores[(t0 + t) * GB + g] = q_g · k_(t0 + t) for GB query heads and TB positions (the block's scores
// are position-major, so a tile's results are one contiguous store). Prefetches the same rows of the
// next block, where they exist (t0 + t < ahead).
template <int GB, int TB, typename T>
inline void score_tile(const float* q, const T* k, int64_t stride, int64_t t0, int64_t head_dim, int64_t ahead,
                       float* scores) {
  constexpr int kHalf = kHalves<GB>;
  constexpr int kAcc = TB * GB * kHalf;
  Vec acc[kAcc] = {};  // acc[(t * GB + g) * kHalf + half]
  for (int64_t d = 0; d < head_dim; d += kStep) {
    for (int t = 0; t < TB; ++t)
      if (t0 + t < ahead && (d * sizeof(T)) % kCacheLine == 0)
        __builtin_prefetch(k + (t0 + t + kBlock) * stride + d, 0, kPrefetchLocality);
    if constexpr (kHalf == 2) {
      Vec q_first[GB], q_second[GB];
      for (int g = 0; g < GB; ++g) {
        q_first[g] = load_vec(q + g * head_dim + d);
        q_second[g] = load_vec(q + g * head_dim + d + kLanes);
      }
      for (int t = 0; t < TB; ++t) {
        Vec first, second;
        Elements<T>::load16(k + (t0 + t) * stride + d, first, second);
        pin_for_heads<GB, T>(first, second);
        for (int g = 0; g < GB; ++g) {
          acc[(t * GB + g) * 2] += q_first[g] * first;
          acc[(t * GB + g) * 2 + 1] += q_second[g] * second;
        }
      }
    } else {
      Vec first[TB], second[TB];
      for (int t = 0; t < TB; ++t) {
        Elements<T>::load16(k + (t0 + t) * stride + d, first[t], second[t]);
        pin_for_heads<GB, T>(first[t], second[t]);
      }
      for (int g = 0; g < GB; ++g) {
        const Vec q_first = load_vec(q + g * head_dim + d), q_second = load_vec(q + g * head_dim + d + kLanes);
        for (int t = 0; t < TB; ++t) {
          // two statements: written as one expression, GCC emits a multiply, a fused multiply-add and an add
          acc[t * GB + g] += q_first * first[t];
          acc[t * GB + g] += q_second * second[t];
        }
      }
    }
  }
  float sums[kAcc];
  if constexpr (kAcc == kLanes) {
    store_vec(sums, sum_lanes8(acc));
  } else {
    for (int i = 0; i < kAcc; ++i) sums[i] = sum_lanes(acc[i]);
  }
  float* dst = scores + t0 * GB;  // the tile's (position, head) pairs in acc's order
  for (int i = 0; i < TB * GB; ++i) dst[i] = kHalf == 2 ? sums[2 * i] + sums[2 * i + 1] : sums[i];
}

// Scores of GB query heads against n positions (k rows `stride` apart), a tile of positions at a
// time; prefetches the first `ahead` rows of the next block.
template <int GB, typename T>
void block_scores(const float* q, const T* k, int64_t stride, int64_t n, int64_t head_dim, int64_t ahead,
                  float* scores) {
  constexpr int TB = kTilePositions<GB>;
  int64_t t = 0;
  for (; t + TB <= n; t += TB) score_tile<GB, TB>(q, k, stride, t, head_dim, ahead, scores);
  for (; t < n; ++t) score_tile<GB, 1>(q, k, stride, t, head_dim, ahead, scores);
}

// Online softmax over one block: turns the [position][head] scores of n positions into unnormalised
// weights e^(s - m), updating each head's running max m and denominator l, and rescaling its
// accumulated output when m grows. Weights past n are zero. The block is taken a vector at a time
// across positions and heads: lane j holds head j % GB (GB divides kLanes), and the per-head max and
// sum are shuffle trees; scalar work is left to blocks that raise a running max, which in a long row
// are few. (Measured against per-lane scalar loops for the max, the running max's lanes and the sums,
// interleaved A/B, 2 threads: bfloat16 MQA +12% on 4 layers x 32 MiB caches, 25.8 -> 29.0 GB/s;
// 1-2 heads and float32 within -3..+4%.)
template <int GB>
void softmax_block(float* scores, int64_t n, int64_t v_dim, float* m, float* l, float* out) {
  static_assert(kLanes % GB == 0, "a vector's lanes must cycle through the heads evenly");
  constexpr int kVecs = kBlock * GB / kLanes;
  for (int64_t i = n * GB; i < kBlock * GB; ++i) scores[i] = -std::numeric_limits<float>::infinity();
  Vec row[kVecs];
  for (int j = 0; j < kVecs; ++j) row[j] = load_vec(scores + j * kLanes);
  Vec top = row[0];
  for (int j = 1; j < kVecs; ++j) top = row[j] > top ? row[j] : top;
  top = across_heads<GB>(top, [](Vec a, Vec b) { return a > b ? a : b; });  // head g's block max in lane g
  for (int g = 0; g < GB; ++g) {
    if (top[g] > m[g]) {  // a new running max: rescale what was accumulated under the old one
      const float rescale = std::exp(m[g] - top[g]);
      l[g] *= rescale;
      for (int64_t d = 0; d < v_dim; ++d) out[g * v_dim + d] *= rescale;
      m[g] = top[g];
    }
  }
  const Vec m_lanes = replicate<GB>(m);  // each lane's head's running max
  for (int j = 0; j < kVecs; ++j) store_vec(scores + j * kLanes, exp_vec(row[j] - m_lanes));
  for (int64_t i = n * GB; i < kBlock * GB; ++i) scores[i] = 0.0f;  // past the split: no weight
  Vec sum{};
  for (int j = 0; j < kVecs; ++j) sum += load_vec(scores + j * kLanes);
  sum = across_heads<GB>(sum, [](Vec a, Vec b) { return a + b; });
  for (int g = 0; g < GB; ++g) l[g] += sum[g];
}

// out[g, d0 .. d0 + 16·DT) += Σ_t weights[t * GB + g] · v_t[d0 ..] for GB query heads over n positions
// (out rows v_dim wide). Prefetches the same columns of the next block's first `ahead` rows.
template <int GB, int DT, typename T>
inline void value_tile(const float* weights, const T* v, int64_t stride, int64_t n, int64_t d0, int64_t v_dim,
                       int64_t ahead, float* out) {
  Vec acc[GB][2 * DT];
  for (int g = 0; g < GB; ++g)
    for (int j = 0; j < 2 * DT; ++j) acc[g][j] = load_vec(out + g * v_dim + d0 + j * kLanes);
  for (int64_t t = 0; t < n; ++t) {
    if (t < ahead)
      for (int j = 0; j < DT; ++j)
        if (((d0 + j * kStep) * sizeof(T)) % kCacheLine == 0)
          __builtin_prefetch(v + (t + kBlock) * stride + d0 + j * kStep, 0, kPrefetchLocality);
    Vec vv[2 * DT];
    for (int j = 0; j < DT; ++j) {
      Elements<T>::load16(v + t * stride + d0 + j * kStep, vv[2 * j], vv[2 * j + 1]);
      pin_for_heads<GB, T>(vv[2 * j], vv[2 * j + 1]);
    }
    for (int g = 0; g < GB; ++g) {
      const Vec w = broadcast(weights[t * GB + g]);
      for (int j = 0; j < 2 * DT; ++j) acc[g][j] += w * vv[j];
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int j = 0; j < 2 * DT; ++j) store_vec(out + g * v_dim + d0 + j * kLanes, acc[g][j]);
}

// out[g] += Σ_t weights[t * GB + g] · v_t (v_dim wide) for GB query heads, kChains/GB vectors of out at a time.
template <int GB, typename T>
void block_values(const float* weights, const T* v, int64_t stride, int64_t n, int64_t v_dim, int64_t ahead,
                  float* out) {
  constexpr int DT = kChains / GB / 2 > 0 ? kChains / GB / 2 : 1;  // 16-element steps per tile
  int64_t d = 0;
  for (; d + DT * kStep <= v_dim; d += DT * kStep) value_tile<GB, DT>(weights, v, stride, n, d, v_dim, ahead, out);
  for (; d < v_dim; d += kStep) value_tile<GB, 1>(weights, v, stride, n, d, v_dim, ahead, out);
}

// One block of n positions (k, v point at its first) for GB query heads: scores over head_dim, softmax,
// values over v_dim. `ahead`: rows of the next block to prefetch while this one is computed.
template <int GB, typename T>
void attend_block(const float* q, const T* k, const T* v, int64_t stride, int64_t n, int64_t head_dim,
                  int64_t v_dim, int64_t ahead, float* m, float* l, float* out) {
  alignas(32) float scores[GB * kBlock];
  block_scores<GB>(q, k, stride, n, head_dim, ahead, scores);
  softmax_block<GB>(scores, n, v_dim, m, l, out);
  block_values<GB>(scores, v, stride, n, v_dim, ahead, out);
}

// Where one (sequence, KV head) row's positions lie. ContiguousRow: a slice of a contiguous cache, position
// t at k + t · stride. PagedRow: pages of a pool behind a block table (Kwon et al. 2023, "Efficient Memory
// Management for Large Language Model Serving with PagedAttention", §4.1): position t in the page of table
// entry (t / page_size) mod table_width, at offset t mod page_size; a window's ring of pages wraps, a full
// history's table is never indexed past its width. `run_end(t)`: where the positions that follow t stop
// being one stride apart (the end of t's page).
template <typename T>
struct ContiguousRow {
  const T* k;
  const T* v;
  int64_t stride;
  int64_t run_end(int64_t) const { return std::numeric_limits<int64_t>::max(); }
  const T* key(int64_t t) const { return k + t * stride; }
  const T* value(int64_t t) const { return v + t * stride; }
};

template <typename T>
struct PagedRow {
  const T* k;  // the pool at this row's KV head: page p's first position at k + p · k_page_stride
  const T* v;
  const int64_t* table;  // this sequence's block table
  int64_t table_width, page_size, k_page_stride, v_page_stride, stride;
  int64_t run_end(int64_t t) const { return (t / page_size + 1) * page_size; }
  int64_t page(int64_t t) const { return table[(t / page_size) % table_width]; }
  const T* key(int64_t t) const { return k + page(t) * k_page_stride + (t % page_size) * stride; }
  const T* value(int64_t t) const { return v + page(t) * v_page_stride + (t % page_size) * stride; }
};

// One split of one row, positions [start, stop), for all `group` query heads of its KV head, from
// scratch. Each block of positions is read from memory once: the heads take it in register tiles of
// 4, 2 and 1 while it is in L1. A block never crosses the end of a page. q: [group, head_dim] in the
// dtype's lane order, pre-scaled; m, l: [group]; out: [group, v_dim] (unnormalised, in the lane order).
template <typename T, typename Row>
void split_attention(const float* q, const Row& row, int64_t start, int64_t stop, int64_t group, int64_t head_dim,
                     int64_t v_dim, float* m, float* l, float* out) {
  std::fill(m, m + group, -std::numeric_limits<float>::infinity());
  std::fill(l, l + group, 0.0f);
  std::fill(out, out + group * v_dim, 0.0f);
  const int64_t stride = row.stride;
  for (int64_t t0 = start; t0 < stop;) {
    const int64_t end = std::min(stop, row.run_end(t0));  // positions one stride apart from t0 on
    const int64_t n = std::min(kBlock, end - t0);
    const T* kb = row.key(t0);
    const T* vb = row.value(t0);
    // The next block is prefetched while this one is computed, spread over the passes (a line per row
    // and step), by the first head tile only. Without it the hardware prefetchers run a few lines
    // ahead and wait: computing and reading memory took turns (measured: the passes' times added up).
    // Only rows of the same run are prefetched: past the end of a page lies another sequence's page.
    const int64_t ahead = std::clamp<int64_t>(end - (t0 + kBlock), 0, kBlock);
    int64_t g = 0;
    for (; g + 4 <= group; g += 4)
      attend_block<4>(q + g * head_dim, kb, vb, stride, n, head_dim, v_dim, g == 0 ? ahead : 0, m + g, l + g,
                      out + g * v_dim);
    for (; g + 2 <= group; g += 2)
      attend_block<2>(q + g * head_dim, kb, vb, stride, n, head_dim, v_dim, g == 0 ? ahead : 0, m + g, l + g,
                      out + g * v_dim);
    for (; g < group; ++g)
      attend_block<1>(q + g * head_dim, kb, vb, stride, n, head_dim, v_dim, g == 0 ? ahead : 0, m + g, l + g,
                      out + g * v_dim);
    t0 += n;
  }
}

// ---- The whole step ----------------------------------------------------------------------------------

struct Shape {
  int64_t batch_size, n_kv_heads, group, head_dim, n_valid;
  int64_t k_batch_stride, k_head_stride, v_batch_stride, v_head_stride, position_stride;
};

// A contiguous cache: every row attends positions [0, n_valid).
template <typename T>
struct ContiguousSource {
  const T* k;
  const T* v;
  Shape shape;
  ContiguousRow<T> row(int64_t r) const {
    const int64_t b = r / shape.n_kv_heads, h = r % shape.n_kv_heads;
    return {k + b * shape.k_batch_stride + h * shape.k_head_stride, v + b * shape.v_batch_stride + h * shape.v_head_stride,
            shape.position_stride};
  }
  int64_t first(int64_t) const { return 0; }
  int64_t stop(int64_t) const { return shape.n_valid; }
};

// A paged cache: pools [n_pages, n_kv_heads, page_size, head_dim], a block table [B, table_width], and per
// sequence the positions [starts[b], stops[b]) it attends.
template <typename T>
struct PagedSource {
  const T* k;
  const T* v;
  const int64_t* table;
  const int64_t* starts;
  const int64_t* stops;
  int64_t n_kv_heads, table_width, page_size, k_page_stride, v_page_stride, k_head_stride, v_head_stride, stride;
  PagedRow<T> row(int64_t r) const {
    const int64_t b = r / n_kv_heads, h = r % n_kv_heads;
    return {k + h * k_head_stride, v + h * v_head_stride, table + b * table_width, table_width, page_size,
            k_page_stride, v_page_stride, stride};
  }
  int64_t first(int64_t r) const { return starts[r / n_kv_heads]; }
  int64_t stop(int64_t r) const { return stops[r / n_kv_heads]; }
};

// q: [rows, group, head_dim] float32 pre-scaled, rows = batch_size · n_kv_heads; out: [rows, group, v_dim].
// Row r attends positions [source.first(r), source.stop(r)), cut into n_splits splits.
template <typename T, typename Source>
void run(const float* q, const Source& source, int64_t rows, int64_t group, int64_t head_dim, int64_t v_dim,
         int64_t n_splits, float* out) {
  // q in the dtype's lane order, within each 16-element step
  std::vector<float> q_lanes(rows * group * head_dim);
  for (int64_t i = 0; i < rows * group * head_dim; i += kStep)
    for (int slot = 0; slot < kStep; ++slot) q_lanes[i + slot] = q[i + Elements<T>::source_index(slot)];

  // Per (row, split): running max and denominator per query head, and the unnormalised output.
  std::vector<float> m(rows * n_splits * group), l(rows * n_splits * group);
  std::vector<float> partial(rows * n_splits * group * v_dim);
  at::parallel_for(0, rows * n_splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / n_splits, split = item % n_splits;
      const int64_t first = source.first(r), last = source.stop(r);
      const int64_t split_len = (last - first + n_splits - 1) / n_splits;
      const int64_t start = std::min(last, first + split * split_len), stop = std::min(last, start + split_len);
      split_attention<T>(q_lanes.data() + r * group * head_dim, source.row(r), start, stop, group, head_dim, v_dim,
                         m.data() + item * group, l.data() + item * group, partial.data() + item * group * v_dim);
    }
  });

  // Merge the splits: out = Σ_s e^(m_s - M) out_s / Σ_s e^(m_s - M) l_s with M = max_s m_s, and put
  // the output back in element order. A split past the end of the row (l = 0) adds nothing.
  std::vector<float> merged(v_dim);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t g = 0; g < group; ++g) {
      float max_m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < n_splits; ++s) max_m = std::max(max_m, m[(row * n_splits + s) * group + g]);
      float denominator = 0.0f;
      std::fill(merged.begin(), merged.end(), 0.0f);
      for (int64_t s = 0; s < n_splits; ++s) {
        const int64_t idx = (row * n_splits + s) * group + g;
        if (l[idx] == 0.0f) continue;
        const float weight = std::exp(m[idx] - max_m);
        denominator += weight * l[idx];
        const float* src = partial.data() + idx * v_dim;
        for (int64_t d = 0; d < v_dim; ++d) merged[d] += weight * src[d];
      }
      float* dst = out + (row * group + g) * v_dim;
      for (int64_t d = 0; d < v_dim; d += kStep)
        for (int slot = 0; slot < kStep; ++slot) dst[d + Elements<T>::source_index(slot)] = merged[d + slot] / denominator;
    }
  }
}

// Positions per split below which merging splits costs more than it spreads the work.
constexpr int64_t kMinSplitLen = 256;
// Work items (row splits) per thread. at::parallel_for gives each thread one contiguous, equal share
// of the items; several per thread keep the shares even when the rows do not divide among the
// threads. (Handing items out one at a time instead, as threads finish, measured no faster here.)
constexpr int64_t kItemsPerThread = 4;

// The factor the scores are scaled by: `scale` where given, else 1/sqrt(head_dim).
double score_scale(const std::optional<double>& scale, int64_t head_dim) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

// q: [B, n_heads, 1, head_dim]; k: [B, n_kv_heads, n_valid, head_dim], v: [B, n_kv_heads, n_valid, v_dim],
// contiguous in their last dim, K and V with the same position stride (views of a cache; V may be a
// slice of K's rows, as MLA's latent is). n_splits <= 0 chooses the number of splits per (sequence, KV
// head) row; `scale` multiplies the scores (default 1/sqrt(head_dim)). Returns [B, n_heads, 1, v_dim] in
// q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t n_splits,
                            std::optional<double> scale) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "decode_attention runs on CPU");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be [B, heads, positions, head_dim]");
  TORCH_CHECK(q.size(2) == 1, "decode_attention takes one new query per sequence, got ", q.size(2));
  TORCH_CHECK(k.sizes().slice(0, 3) == v.sizes().slice(0, 3), "k and v must have the same batch, heads and positions");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "k and v must have the same dtype");
  const int64_t batch_size = q.size(0), n_heads = q.size(1), head_dim = q.size(3), v_dim = v.size(3);
  const int64_t n_kv_heads = k.size(1), n_valid = k.size(2);
  TORCH_CHECK(k.size(0) == batch_size && k.size(3) == head_dim, "k does not match q's batch size or head_dim");
  TORCH_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
  TORCH_CHECK(head_dim % kStep == 0, "head_dim must be a multiple of ", kStep, ", got ", head_dim);
  TORCH_CHECK(v_dim % kStep == 0, "v's width must be a multiple of ", kStep, ", got ", v_dim);
  TORCH_CHECK(n_valid > 0, "the cache slice is empty");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k and v must be contiguous in head_dim");
  TORCH_CHECK(k.stride(2) == v.stride(2), "k and v must have the same position stride");
  const Shape shape{batch_size, n_kv_heads, n_heads / n_kv_heads, head_dim, n_valid,
                    k.stride(0),  k.stride(1), v.stride(0),          v.stride(1), k.stride(2)};
  const int64_t rows = batch_size * n_kv_heads;
  if (n_splits <= 0) {  // enough work items for every thread, none shorter than kMinSplitLen
    const int64_t wanted = (kItemsPerThread * at::get_num_threads() + rows - 1) / rows;
    n_splits = std::max<int64_t>(1, std::min(wanted, n_valid / kMinSplitLen));
  }
  n_splits = std::min(n_splits, n_valid);
  // float32, pre-scaled; query head kv_head · group + g uses KV head kv_head
  const at::Tensor q32 = (q.to(at::kFloat) * score_scale(scale, head_dim)).contiguous();
  at::Tensor out = at::empty({batch_size, n_heads, 1, v_dim}, q.options().dtype(at::kFloat));
  const float* q_data = q32.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  const int64_t group = n_heads / n_kv_heads;
  switch (k.scalar_type()) {
    case at::kFloat:
      run<float>(q_data, ContiguousSource<float>{k.data_ptr<float>(), v.data_ptr<float>(), shape}, rows, group, head_dim,
                 v_dim, n_splits, out_data);
      break;
    case at::kBFloat16:
      run<c10::BFloat16>(q_data,
                         ContiguousSource<c10::BFloat16>{k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(), shape},
                         rows, group, head_dim, v_dim, n_splits, out_data);
      break;
    case at::kHalf:
      run<c10::Half>(q_data, ContiguousSource<c10::Half>{k.data_ptr<c10::Half>(), v.data_ptr<c10::Half>(), shape}, rows,
                     group, head_dim, v_dim, n_splits, out_data);
      break;
    default:
      TORCH_CHECK(false, "decode_attention takes float32, bfloat16 or float16 caches, got ", k.scalar_type());
  }
  return out.to(q.scalar_type());
}

// The same step over a paged cache. q: [B, n_heads, 1, head_dim]; k_pool: [n_pages, n_kv_heads, page_size,
// head_dim], v_pool: [n_pages, n_kv_heads, page_size, v_dim], contiguous in their last dim, with the same
// position stride; block_table: [B, width] int64 page indices; starts, stops: [B] int64, the positions
// [starts[b], stops[b]) sequence b attends (each at least one). n_splits <= 0 chooses the splits per row as
// decode_attention does, from the longest sequence; `scale` as there. Returns [B, n_heads, 1, v_dim] in q's
// dtype.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& block_table, const at::Tensor& starts, const at::Tensor& stops,
                                  int64_t n_splits, std::optional<double> scale) {
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(),
              "paged_decode_attention runs on CPU");
  TORCH_CHECK(q.dim() == 4 && k_pool.dim() == 4 && v_pool.dim() == 4,
              "q must be [B, heads, 1, head_dim] and the pools [pages, heads, page_size, head_dim]");
  TORCH_CHECK(q.size(2) == 1, "paged_decode_attention takes one new query per sequence, got ", q.size(2));
  TORCH_CHECK(k_pool.sizes().slice(0, 3) == v_pool.sizes().slice(0, 3),
              "the K and V pools must have the same pages, heads and page size");
  TORCH_CHECK(k_pool.scalar_type() == v_pool.scalar_type(), "the K and V pools must have the same dtype");
  TORCH_CHECK(block_table.scalar_type() == at::kLong && starts.scalar_type() == at::kLong &&
                  stops.scalar_type() == at::kLong,
              "the block table, starts and stops must be int64");
  const int64_t batch_size = q.size(0), n_heads = q.size(1), head_dim = q.size(3), v_dim = v_pool.size(3);
  const int64_t n_kv_heads = k_pool.size(1), page_size = k_pool.size(2);
  TORCH_CHECK(k_pool.size(3) == head_dim, "the pools do not match q's head_dim");
  TORCH_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
  TORCH_CHECK(head_dim % kStep == 0, "head_dim must be a multiple of ", kStep, ", got ", head_dim);
  TORCH_CHECK(v_dim % kStep == 0, "v's width must be a multiple of ", kStep, ", got ", v_dim);
  TORCH_CHECK(k_pool.stride(3) == 1 && v_pool.stride(3) == 1, "the pools must be contiguous in head_dim");
  TORCH_CHECK(k_pool.stride(2) == v_pool.stride(2), "the pools must have the same position stride");
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == batch_size && block_table.size(1) > 0,
              "the block table must be [B, width]");
  TORCH_CHECK(starts.numel() == batch_size && stops.numel() == batch_size, "starts and stops need one entry a sequence");
  const at::Tensor table = block_table.contiguous(), first = starts.contiguous(), last = stops.contiguous();
  const int64_t* first_data = first.data_ptr<int64_t>();
  const int64_t* last_data = last.data_ptr<int64_t>();
  const int64_t* table_data = table.data_ptr<int64_t>();
  const int64_t n_pages = k_pool.size(0), width = table.size(1);
  int64_t longest = 0;
  for (int64_t b = 0; b < batch_size; ++b) {
    TORCH_CHECK(0 <= first_data[b] && first_data[b] < last_data[b], "sequence ", b, " attends no position");
    TORCH_CHECK(last_data[b] - first_data[b] <= width * page_size, "sequence ", b, " attends more positions than its ",
                width, " pages hold");
    longest = std::max(longest, last_data[b] - first_data[b]);
  }
  for (int64_t i = 0; i < batch_size * width; ++i)
    TORCH_CHECK(0 <= table_data[i] && table_data[i] < n_pages, "block table entry ", i, " is not a page of the pool");
  const int64_t rows = batch_size * n_kv_heads;
  if (n_splits <= 0) {
    const int64_t wanted = (kItemsPerThread * at::get_num_threads() + rows - 1) / rows;
    n_splits = std::max<int64_t>(1, std::min(wanted, longest / kMinSplitLen));
  }
  n_splits = std::min(n_splits, longest);
  const at::Tensor q32 = (q.to(at::kFloat) * score_scale(scale, head_dim)).contiguous();
  at::Tensor out = at::empty({batch_size, n_heads, 1, v_dim}, q.options().dtype(at::kFloat));
  const float* q_data = q32.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  const int64_t group = n_heads / n_kv_heads;
  auto source = [&](auto* k, auto* v) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(k)>>;
    return PagedSource<T>{k,          v,          table_data,         first_data,         last_data,
                          n_kv_heads, width,      page_size,          k_pool.stride(0),   v_pool.stride(0),
                          k_pool.stride(1),       v_pool.stride(1),   k_pool.stride(2)};
  };
  switch (k_pool.scalar_type()) {
    case at::kFloat:
      run<float>(q_data, source(k_pool.data_ptr<float>(), v_pool.data_ptr<float>()), rows, group, head_dim, v_dim,
                 n_splits, out_data);
      break;
    case at::kBFloat16:
      run<c10::BFloat16>(q_data, source(k_pool.data_ptr<c10::BFloat16>(), v_pool.data_ptr<c10::BFloat16>()), rows,
                         group, head_dim, v_dim, n_splits, out_data);
      break;
    case at::kHalf:
      run<c10::Half>(q_data, source(k_pool.data_ptr<c10::Half>(), v_pool.data_ptr<c10::Half>()), rows, group, head_dim,
                     v_dim, n_splits, out_data);
      break;
    default:
      TORCH_CHECK(false, "paged_decode_attention takes float32, bfloat16 or float16 pools, got ", k_pool.scalar_type());
  }
  return out.to(q.scalar_type());
}

}  // namespace

TORCH_LIBRARY(attnbench, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, int n_splits=0, float? scale=None) -> Tensor");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_table, Tensor starts, "
      "Tensor stops, int n_splits=0, float? scale=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(attnbench, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("paged_decode_attention", &paged_decode_attention);
}
