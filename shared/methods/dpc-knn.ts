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
  // four rows j per pass over row i, each sum still taken in order over k, so the values are the
  // one-pair-at-a-time loop's exactly, in about a quarter of the time.
  const put = (i: number, j: number, s: number): void => {
    const v = Math.sqrt(s) / Math.sqrt(d);
    dist[i * n + j] = v;
    dist[j * n + i] = v;
    distMax = Math.max(distMax, v);
  };
  for (let i = 0; i < n; i++) {
    const ri = rows[i]!;
    let j = i + 1;
    for (; j + 3 < n; j += 4) {
      const r0 = rows[j]!;
      const r1 = rows[j + 1]!;
      const r2 = rows[j + 2]!;
      const r3 = rows[j + 3]!;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let k = 0; k < d; k++) {
        const x = ri[k]!;
        const t0 = x - r0[k]!;
        const t1 = x - r1[k]!;
        const t2 = x - r2[k]!;
        const t3 = x - r3[k]!;
        s0 += t0 * t0;
        s1 += t1 * t1;
        s2 += t2 * t2;
        s3 += t3 * t3;
      }
      put(i, j, s0);
      put(i, j + 1, s1);
      put(i, j + 2, s2);
      put(i, j + 3, s3);
    }
    for (; j < n; j++) {
      const rj = rows[j]!;
      let s = 0;
      for (let k = 0; k < d; k++) {
        const t = ri[k]! - rj[k]!;
        s += t * t;
      }
      put(i, j, s);
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
