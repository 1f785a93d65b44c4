//! `filterdb analyze` on the fixture store: shapes, symmetry, ordering, and agreement
//! with the same pipeline written as SQL.

use crate::common::{fixture_store, ok, s};

fn csv_matrix(text: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("header")
        .split(',')
        .skip(1)
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            l.rsplitn(header.len() + 1, ',')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .skip(1)
                .map(|v| v.parse().expect("a number"))
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn kl_matrix_by_task_is_symmetric_with_zero_diagonal_and_sorted() {
    let store = fixture_store("f16");
    let out = ok(&[
        "analyze",
        "kl-matrix",
        "--store",
        s(store),
        "--by",
        "task",
        "--format",
        "csv",
        "--threads",
        "1",
    ]);
    let (groups, m) = csv_matrix(&out);
    assert!(groups.len() >= 2, "{out}");
    assert_eq!(m.len(), groups.len());
    for (i, row) in m.iter().enumerate() {
        assert_eq!(row[i], 0.0);
        for (j, &v) in row.iter().enumerate() {
            assert!(
                (v - m[j][i]).abs() <= 1e-12 * v.abs().max(1.0),
                "not symmetric: {out}"
            );
            assert!(v >= 0.0);
        }
    }
    // Sorted by column mean, ascending.
    let means: Vec<f64> = (0..m.len())
        .map(|c| m.iter().map(|r| r[c]).sum::<f64>() / m.len() as f64)
        .collect();
    assert!(means.windows(2).all(|w| w[0] <= w[1]), "{means:?}");
    // The same pair through SQL, with the functions directly.
    let (a, b) = (&groups[0], &groups[1]);
    let sql = format!(
        "WITH b AS (SELECT pca_fit(peak_scale(weights)) AS b FROM filters_meta), \
         r AS (SELECT coef_range(pca_project(peak_scale(weights), (SELECT b FROM b))) AS r FROM filters_meta), \
         h AS (SELECT task, coef_histogram(pca_project(peak_scale(weights), (SELECT b FROM b)), \
               (SELECT r['min'] FROM r), (SELECT r['max'] FROM r), 70) AS h FROM filters_meta GROUP BY task) \
         SELECT kl_drift(x.h, y.h, (SELECT b['explained_variance_ratio'] FROM b)) AS d \
         FROM h x, h y WHERE x.task = '{a}' AND y.task = '{b}'"
    );
    let d: f64 = ok(&[
        "sql",
        "--store",
        s(store),
        "--threads",
        "1",
        "--format",
        "csv",
        &sql,
    ])
    .lines()
    .nth(1)
    .unwrap()
    .parse()
    .unwrap();
    assert!(
        (d - m[0][1]).abs() <= 1e-9 * d.abs().max(1e-12),
        "{d} vs {}",
        m[0][1]
    );
}

#[test]
fn kl_matrix_by_depth_keeps_bucket_order_and_json_has_sizes() {
    let store = fixture_store("f32");
    let out = ok(&[
        "analyze",
        "kl-matrix",
        "--store",
        s(store),
        "--by",
        "depth",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    let lower = |g: &str| -> f64 { g[1..].split(',').next().unwrap().parse().unwrap() };
    assert!(
        groups.windows(2).all(|w| lower(w[0]) < lower(w[1])),
        "{groups:?}"
    );
    let filters: i64 = v["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .sum();
    let total = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "SELECT count(*) FROM filters",
    ]);
    assert_eq!(
        total.lines().nth(1).unwrap().parse::<i64>().unwrap(),
        filters
    );
    assert_eq!(v["matrix"].as_array().unwrap().len(), groups.len());
}

#[test]
fn degeneration_and_pca_report() {
    let store = fixture_store("f16");
    let out = ok(&[
        "analyze",
        "degeneration",
        "--store",
        s(store),
        "--all-layers",
        "--format",
        "csv",
    ]);
    assert!(
        out.contains("sparsity")
            && out.contains("entropy_clean_norm")
            && out.contains("orthogonality"),
        "{out}"
    );
    let layers = ok(&[
        "sql",
        "--store",
        s(store),
        "--format",
        "csv",
        "SELECT count(*) FROM layers",
    ]);
    let n: usize = layers.lines().nth(1).unwrap().parse().unwrap();
    // header + one row per layer, then the per-model table (header + 6 models)
    assert_eq!(out.lines().count(), 1 + n + 1 + 6, "{out}");
    let pca = ok(&["analyze", "pca", "--store", s(store), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(pca.trim()).expect("json");
    let evr: Vec<f64> = v["explained_variance_ratio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((evr.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(evr.windows(2).all(|w| w[0] >= w[1]));
    let text = ok(&[
        "analyze",
        "pca",
        "--store",
        s(store),
        "--where",
        "conv_depth_norm <= 0.5",
    ]);
    assert!(
        text.contains("component 8") && text.contains("cumulative 1.0000"),
        "{text}"
    );
}

/// The same answers with one partition, several, and a memory limit small enough to make
/// the aggregates spill: `pca_fit` sums are exact across batches and partitions, and the
/// scan cuts the same batches whatever the partitioning (its layer splits fall where
/// batches end anyway), so the output is identical.
#[test]
fn answers_do_not_depend_on_partitions_or_memory_limit() {
    let store = fixture_store("f16");
    let run = |extra: &[&str]| {
        let mut kl = vec![
            "analyze",
            "kl-matrix",
            "--store",
            s(store),
            "--by",
            "task",
            "--format",
            "csv",
        ];
        kl.extend_from_slice(extra);
        let mut deg = vec![
            "analyze",
            "degeneration",
            "--store",
            s(store),
            "--all-layers",
            "--format",
            "csv",
        ];
        deg.extend_from_slice(extra);
        let mut depth = vec![
            "analyze",
            "kl-matrix",
            "--store",
            s(store),
            "--by",
            "depth",
            "--format",
            "json",
        ];
        depth.extend_from_slice(extra);
        (ok(&kl), ok(&deg), ok(&depth))
    };
    let one = run(&["--threads", "1"]);
    for extra in [
        &["--threads", "2"][..],
        &["--threads", "5"][..],
        // more partitions than models, and than the scan can fill with layers
        &["--threads", "7"][..],
        &["--threads", "48"][..],
        &["--threads", "3", "--memory-limit", "2M"][..],
    ] {
        let other = run(extra);
        assert_eq!(one.0, other.0, "kl-matrix by task with {extra:?}");
        assert_eq!(one.2, other.2, "kl-matrix by depth with {extra:?}");
        assert_eq!(one.1, other.1, "degeneration with {extra:?}");
    }
    // A range guessed from one or three filters is too narrow, so kl-matrix runs its
    // third pass (kl_matrix_passes_follow_the_range_guess): the same matrices.
    for extra in [
        &["--threads", "2", "--range-candidates", "1"][..],
        &["--threads", "1", "--range-candidates", "3"][..],
    ] {
        let kl = |by: &str, format: &str| {
            let mut args = vec![
                "analyze",
                "kl-matrix",
                "--store",
                s(store),
                "--by",
                by,
                "--format",
                format,
            ];
            args.extend_from_slice(extra);
            ok(&args)
        };
        assert_eq!(one.0, kl("task", "csv"), "kl-matrix by task with {extra:?}");
        assert_eq!(
            one.2,
            kl("depth", "json"),
            "kl-matrix by depth with {extra:?}"
        );
    }
}

/// The KL pipeline's `pca_project(peak_scale(weights), basis)` is planned as the fused
/// `pca_project(weights, basis, true)`, and on the fixture store's float16 filters that
/// gives the bits of projecting `peak_scale(weights)` materialised first.
#[test]
fn peak_scale_is_fused_into_pca_project() {
    use arrow::array::{Array, AsArray};
    let (rt, ctx) = crate::common::store_ctx(fixture_store("f16"));
    rt.block_on(async {
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { ctx.sql(sql).await.expect("plan").collect().await.expect("run") }
        };
        run("CREATE TABLE _b AS SELECT pca_fit(peak_scale(weights)) AS b FROM filters").await;
        let plan = run(
            "EXPLAIN SELECT coef_range(pca_project(peak_scale(weights), (SELECT b FROM _b))) FROM filters",
        )
        .await;
        let text = arrow::util::pretty::pretty_format_batches(&plan).unwrap().to_string();
        // (the output column keeps the name of the expression as written)
        assert!(!text.contains("pca_project(peak_scale(filters.weights), "), "{text}");
        assert!(
            text.contains("pca_project(filters.weights, (<subquery>), Boolean(true))"),
            "{text}"
        );
        run("CREATE TABLE _s AS SELECT weights, peak_scale(weights) AS s FROM filters").await;
        let same = run(
            "SELECT count(*), bool_and(pca_project(s, b) = pca_project(weights, b, true)) FROM _s, _b",
        )
        .await;
        let n = same[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
        assert!(n > 1000, "{n} filters");
        assert!(same[0].column(1).as_boolean().value(0));
        assert!(same[0].column(1).is_valid(0));
    });
}

/// `kl-matrix` reads the filters twice when the largest filters' coefficients span the
/// whole range (always on the small fixture store, where every filter is a candidate),
/// three times when they do not (one candidate); the output is the same either way
/// (checked by `answers_do_not_depend_on_partitions_or_memory_limit`).
#[test]
fn kl_matrix_passes_follow_the_range_guess() {
    let store = fixture_store("f16");
    let args = |k: &'static str| {
        [
            "analyze",
            "kl-matrix",
            "--store",
            s(store),
            "--by",
            "task",
            "--range-candidates",
            k,
        ]
    };
    let passes = |k: &'static str| {
        let out = crate::common::run(&args(k));
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        err.split(" passes)")
            .next()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no pass count in {err}"))
    };
    assert_eq!(passes("16384"), 2);
    assert_eq!(passes("1"), 3);
    let bad = crate::common::fails(&args("0"));
    assert!(bad.contains("--range-candidates"), "{bad}");
}
