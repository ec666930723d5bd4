/**
 * Density-peak clustering with k-nearest-neighbour density (DPC-kNN), as SparseVLM's
 * `cluster_and_merge` (utils.py) uses it to recycle pruned tokens: pruning-spec.md §2.5 step 4.
 *
 * The official code adds U(0, 1e-6) noise to the densities so no two are equal; here equal densities
 * are ordered by index instead (lower index counts as denser), so the result is reproducible.
 */

export interface Clustering {
  /** Cluster of each input row, in 0..C-1. */
  readonly assign: Int32Array;
  /** Input row of each cluster's centre, in the code's order (descending density × distance). */
  readonly centers: readonly number[];
}

/** `rows` n x d feature rows; C clusters (C <= n). */
export function dpcKnn(rows: readonly ArrayLike<number>[], C: number): Clustering {
  const n = rows.length;
  const d = n > 0 ? rows[0]!.length : 0;
  const dist = new Float64Array(n * n);
  let distMax = 0;
  // The pairwise distances are most of the time (83 rows of 4096 on LLaVA's first SparseVLM step):
  // two rows i times four rows j per pass over k, so each value of a j row is read once for both;
  // each sum is still taken in order over k, so the values are the one-pair-at-a-time loop's exactly.
  const put = (i: number, j: number, s: number): void => {
    const v = Math.sqrt(s) / Math.sqrt(d);
    dist[i * n + j] = v;
    dist[j * n + i] = v;
    distMax = Math.max(distMax, v);
  };
  for (let i = 0; i + 1 < n; i += 2) {
    const ra = rows[i]!;
    const rb = rows[i + 1]!;
    put(i, i + 1, squaredDistance(ra, rb, d));
    let j = i + 2;
    for (; j + 3 < n; j += 4) {
      const r0 = rows[j]!;
      const r1 = rows[j + 1]!;
      const r2 = rows[j + 2]!;
      const r3 = rows[j + 3]!;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let k = 0; k < d; k++) {
        const x = ra[k]!;
        const y = rb[k]!;
        const c0 = r0[k]!, c1 = r1[k]!, c2 = r2[k]!, c3 = r3[k]!;
        const t0 = x - c0, t1 = x - c1, t2 = x - c2, t3 = x - c3;
        const u0 = y - c0, u1 = y - c1, u2 = y - c2, u3 = y - c3;
        a0 += t0 * t0;
        a1 += t1 * t1;
        a2 += t2 * t2;
        a3 += t3 * t3;
        b0 += u0 * u0;
        b1 += u1 * u1;
        b2 += u2 * u2;
        b3 += u3 * u3;
      }
      put(i, j, a0);
      put(i, j + 1, a1);
      put(i, j + 2, a2);
      put(i, j + 3, a3);
      put(i + 1, j, b0);
      put(i + 1, j + 1, b1);
      put(i + 1, j + 2, b2);
      put(i + 1, j + 3, b3);
    }
    for (; j < n; j++) {
      put(i, j, squaredDistance(ra, rows[j]!, d));
      put(i + 1, j, squaredDistance(rb, rows[j]!, d));
    }
  }
  // Density from the C nearest neighbours, the row itself (distance 0) included.
  const density = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const sorted = Float64Array.from(dist.subarray(i * n, (i + 1) * n)).sort();
    let s = 0;
    for (let k = 0; k < C; k++) s += sorted[k]! * sorted[k]!;
    density[i] = Math.exp(-s / C);
  }
  const denser = (j: number, i: number): boolean => density[j]! > density[i]! || (density[j] === density[i] && j < i);
  // Distance to the nearest denser row; the densest row gets the largest distance of all.
  const score = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let delta = distMax;
    for (let j = 0; j < n; j++) if (denser(j, i)) delta = Math.min(delta, dist[i * n + j]!);
    score[i] = delta * density[i]!;
  }
  const centers = Array.from({ length: n }, (_, i) => i)
    .sort((a, b) => score[b]! - score[a]! || a - b)
    .slice(0, C);
  const assign = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (dist[i * n + centers[c]!]! < dist[i * n + centers[best]!]!) best = c;
    assign[i] = best;
  }
  // A centre always belongs to its own cluster, even when another centre is at distance 0.
  centers.forEach((row, c) => {
    assign[row] = c;
  });
  return { assign, centers };
}

/** Σ_k (a_k − b_k)², in order over k. */
function squaredDistance(a: ArrayLike<number>, b: ArrayLike<number>, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) {
    const t = a[k]! - b[k]!;
    s += t * t;
  }
  return s;
}
