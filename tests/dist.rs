//! Sharded optimizer state across ranks (threads of this process standing
//! in for processes): every catalog rule's sharded step against one
//! process's, bit for bit; the collectives' rank order; failures.

use lensopt::catalog;
use lensopt::dist::check::sharded_matches_one_process;
use lensopt::dist::{
    all_gather_into, all_reduce_f64, reduce_scatter_sum, Collective, ShardLayout, ShardedStepper,
    SingleProcess, Threads,
};
use lensopt::{NonFinite, Optimizer};
use ndarray::{Array1, ArrayD};
use std::sync::Arc;
use std::time::Duration;

/// Runs `f(rank)` on every rank of a group of `ranks` threads; the results in rank order.
fn on_ranks<T: Send>(ranks: usize, f: impl Fn(Arc<dyn Collective>) -> T + Sync) -> Vec<T> {
    let group = Threads::group(ranks, Duration::from_secs(120));
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let f = &f;
                s.spawn(move || f(Arc::new(comm)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every catalog rule, sharded over 1 to 4 ranks (2 and 3 in debug
/// builds), matches one process bit for bit after three steps, on every rank.
#[test]
fn every_catalog_rule_sharded_is_one_process_bit_for_bit() {
    let rank_counts: &[usize] = if cfg!(debug_assertions) {
        &[2, 3]
    } else {
        &[1, 2, 3, 4]
    };
    let mut failures = Vec::new();
    for name in catalog::all_names() {
        for &ranks in rank_counts {
            let results = on_ranks(ranks, |comm| {
                sharded_matches_one_process::<f32>(name, comm, 3).map_err(|e| e.to_string())
            });
            for (rank, r) in results.into_iter().enumerate() {
                match r {
                    Ok(None) => {}
                    Ok(Some(what)) => failures.push(format!(
                        "{name}, {ranks} ranks, rank {rank}: {what} differs"
                    )),
                    Err(e) => failures.push(format!("{name}, {ranks} ranks, rank {rank}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn f64_rules_with_reductions_shard_bit_for_bit() {
    for name in ["lamb", "adan", "adamw", "cadamw"] {
        for r in on_ranks(3, |comm| {
            sharded_matches_one_process::<f64>(name, comm, 2).map_err(|e| e.to_string())
        }) {
            assert_eq!(r.unwrap(), None, "{name}");
        }
    }
}

#[test]
fn layouts_cover_every_tensor_in_rank_order() {
    let numels = [0, 1, 5, 65_536, 65_537, 1 << 20, 3 * 65_536 + 1];
    for ranks in 1..6 {
        for layout in [
            ShardLayout::chunked(&numels, ranks).unwrap(),
            ShardLayout::whole(&numels, ranks).unwrap(),
        ] {
            for (k, &n) in numels.iter().enumerate() {
                let ranges = layout.ranges(k).unwrap();
                assert_eq!(ranges.len(), ranks);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[ranks - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
        let chunked = ShardLayout::chunked(&numels, ranks).unwrap();
        for k in 0..numels.len() {
            for r in chunked.ranges(k).unwrap().iter().filter(|r| !r.is_empty()) {
                assert_eq!(r.start % 65_536, 0, "shards start at chunk boundaries");
            }
        }
        // Single-chunk tensors spread over the ranks.
        let small = ShardLayout::chunked(&vec![10; ranks], ranks).unwrap();
        let owners: std::collections::BTreeSet<usize> = (0..ranks)
            .map(|k| {
                small
                    .ranges(k)
                    .unwrap()
                    .iter()
                    .position(|r| !r.is_empty())
                    .unwrap()
            })
            .collect();
        assert_eq!(owners.len(), ranks);
    }
    assert!(ShardLayout::chunked(&numels, 0).is_err());
}

#[test]
fn collectives_combine_in_rank_order() {
    let results = on_ranks(3, |comm| {
        let layout = ShardLayout::chunked(&[200_000], 3).unwrap();
        // Values whose sum depends on the order of addition.
        let r = comm.rank() as f32;
        let full: Vec<f32> = (0..200_000)
            .map(|i| [1e8_f32, 1.0, -1e8][comm.rank()] + (i % 7) as f32 * r)
            .collect();
        let shard = reduce_scatter_sum(comm.as_ref(), &layout, 0, &full).unwrap();
        let mut gathered = vec![0.0f32; 200_000];
        all_gather_into(comm.as_ref(), &layout, 0, &shard, &mut gathered).unwrap();
        let sums = all_reduce_f64(comm.as_ref(), &[r as f64 + 0.5], |a, b| a + b).unwrap();
        (gathered, sums)
    });
    let want: Vec<f32> = (0..200_000)
        .map(|i| {
            let x = |r: usize| [1e8_f32, 1.0, -1e8][r] + (i % 7) as f32 * r as f32;
            (x(0) + x(1)) + x(2)
        })
        .collect();
    for (gathered, sums) in results {
        assert_eq!(gathered, want);
        assert_eq!(sums, vec![0.5 + 1.5 + 2.5]);
    }
    let one = SingleProcess;
    assert_eq!(one.all_gather(b"x").unwrap(), vec![b"x".to_vec()]);
}

/// A NaN on one rank's gradients refuses the step on every rank, and
/// nothing changes; `Skip` skips it on every rank.
#[test]
fn a_non_finite_gradient_on_one_rank_stops_every_rank() {
    let results = on_ranks(2, |comm| {
        let adam = catalog::get("adam").unwrap();
        let mut p = Array1::<f32>::from_elem(150_000, 0.5).into_dyn();
        let before = p.clone();
        let mut stepper = ShardedStepper::new(&adam, &[&p], comm.clone()).unwrap();
        let mut g = Array1::<f32>::from_elem(150_000, 0.1).into_dyn();
        if comm.rank() == 1 {
            g[[140_000]] = f32::NAN;
        }
        let refused = stepper.step(&mut [&mut p], &[&g]).unwrap_err().to_string();
        let unchanged = p == before && stepper.t() == 0;
        stepper.set_non_finite(NonFinite::Skip);
        stepper.step(&mut [&mut p], &[&g]).unwrap();
        (refused, unchanged, stepper.skipped(), p == before)
    });
    for (refused, unchanged, skipped, still) in results {
        assert!(refused.contains("140000"), "{refused}");
        assert!(unchanged && still);
        assert_eq!(skipped, 1);
    }
}

/// A mistake on one rank is refused on every rank, before anything is
/// exchanged or changed.
#[test]
fn a_bad_argument_on_one_rank_is_refused_on_every_rank() {
    let results = on_ranks(2, |comm| {
        let adam = catalog::get("adam").unwrap();
        let mut p = Array1::<f32>::zeros(10).into_dyn();
        let mut stepper = ShardedStepper::new(&adam, &[&p], comm.clone()).unwrap();
        let g: ArrayD<f32> = if comm.rank() == 0 {
            Array1::zeros(10).into_dyn()
        } else {
            Array1::zeros(9).into_dyn()
        };
        stepper
            .step(&mut [&mut p], &[&g])
            .map_err(|e| e.to_string())
    });
    for r in results {
        let e = r.unwrap_err();
        assert!(e.contains("shape"), "{e}");
    }
    // Ranks that disagree on the tensors are refused at creation.
    let results = on_ranks(2, |comm| {
        let adam = catalog::get("adam").unwrap();
        let p = Array1::<f32>::zeros(10 + comm.rank()).into_dyn();
        ShardedStepper::new(&adam, &[&p], comm)
            .err()
            .map(|e| e.to_string())
    });
    assert!(results
        .iter()
        .all(|e| e.as_deref().is_some_and(|e| e.contains("other tensors"))));
}

/// A rank that leaves makes the others' next collective fail at once,
/// naming it; one that never arrives, within the timeout.
#[test]
fn a_rank_that_leaves_or_hangs_fails_the_others_with_an_error() {
    let mut group = Threads::group(2, Duration::from_millis(300));
    let second = group.pop().unwrap();
    let first = group.pop().unwrap();
    drop(second);
    let e = first.all_gather(b"x").unwrap_err().to_string();
    assert!(e.contains("rank 1 left"), "{e}");
    let mut group = Threads::group(2, Duration::from_millis(300));
    let _second = group.pop().unwrap();
    let first = group.pop().unwrap();
    let started = std::time::Instant::now();
    let e = first.all_gather(b"x").unwrap_err().to_string();
    assert!(e.contains("did not reach"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn state_is_sharded_not_copied() {
    let results = on_ranks(4, |comm| {
        let adam = catalog::get("adam").unwrap();
        let p = Array1::<f32>::zeros(4 * 65_536).into_dyn();
        ShardedStepper::new(&adam, &[&p], comm)
            .unwrap()
            .state_bytes()
    });
    // A quarter of one process's state on each rank.
    let p = Array1::<f32>::zeros(4 * 65_536).into_dyn();
    let one = catalog::get("adam").unwrap().init(&[&p]).unwrap();
    let whole = (one.state_bytes_per_element() * 4.0 * 65_536.0) as usize;
    assert!(whole > 0);
    assert_eq!(results, vec![whole / 4; 4]);
}
