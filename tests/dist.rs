//! Sharded optimizer state across ranks (threads of this process standing
//! in for processes): every catalog rule's sharded step against one
//! process's, bit for bit; the collectives' rank order; failures.

use lensopt::catalog;
use lensopt::dist::check::sharded_matches_one_process;
use lensopt::dist::{
    all_gather_tensor, all_reduce_f64, reduce_scatter_sum, Collective, ShardLayout, ShardedStepper,
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
        all_gather_tensor(comm.as_ref(), &layout, 0, &shard, &mut gathered).unwrap();
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
/// The thread transport's exchanges into known layouts, round after round
/// with sizes that grow, shrink and differ per rank (its buffers are
/// reused between rounds), against the plain collectives; wrong counts are
/// errors on every rank.
#[test]
fn thread_exchanges_reuse_buffers_and_keep_every_byte() {
    let results = on_ranks(3, |comm| {
        let (rank, size) = (comm.rank(), comm.size());
        let byte = |from: usize, to: usize, i: usize| (from * 31 + to * 7 + i) as u8;
        for round in 0..6usize {
            // Rank r sends (round * 1000 + 17 * r + t) bytes to rank t.
            let len = |from: usize, to: usize| (round % 3) * 1000 + 17 * from + to + round;
            let send_counts: Vec<usize> = (0..size).map(|t| len(rank, t)).collect();
            let send: Vec<u8> = (0..size)
                .flat_map(|t| (0..len(rank, t)).map(move |i| byte(rank, t, i)))
                .collect();
            let recv_counts: Vec<usize> = (0..size).map(|f| len(f, rank)).collect();
            let mut recv = vec![0u8; recv_counts.iter().sum()];
            comm.all_to_all_into(&send, &send_counts, &mut recv, &recv_counts)
                .unwrap();
            let want: Vec<u8> = (0..size)
                .flat_map(|f| (0..len(f, rank)).map(move |i| byte(f, rank, i)))
                .collect();
            assert_eq!(recv, want, "round {round}, rank {rank}");
            // All-gather of this rank's block.
            let local: Vec<u8> = (0..len(rank, 0)).map(|i| byte(rank, 9, i)).collect();
            let counts: Vec<usize> = (0..size).map(|f| len(f, 0)).collect();
            let mut out = vec![0u8; counts.iter().sum()];
            comm.all_gather_into(&local, &counts, &mut out).unwrap();
            let want: Vec<u8> = (0..size)
                .flat_map(|f| (0..len(f, 0)).map(move |i| byte(f, 9, i)))
                .collect();
            assert_eq!(out, want, "round {round}, rank {rank}");
            assert_eq!(comm.all_gather(&local).unwrap()[rank], local);
        }
        // A rank that promises more than it sends: every rank is told.
        let local = vec![rank as u8; 10];
        let counts = vec![10, 10, 10];
        let mut out = vec![0u8; 30];
        let wrong = if rank == 1 {
            vec![10, 11, 9]
        } else {
            counts.clone()
        };
        let checked = comm.all_gather_into(&local, &wrong, &mut out);
        (rank, checked.is_err())
    });
    // Rank 1's counts do not fit its block: it refuses before sending, and
    // the others, left waiting, are told when it leaves the group.
    assert!(results.iter().all(|(_, err)| *err), "{results:?}");
}

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
    // The check is made on the sums, as each rank's shard is summed: a NaN
    // from rank 1 in rank 0's shard, and two finite values whose sum
    // overflows, are found by the rank that owns them; one rank alone
    // checks as it copies.
    for (ranks, at, values) in [
        (2, 10, [0.1, f32::NAN]),
        (2, 149_000, [3e38, 3e38]),
        (1, 77, [f32::INFINITY, 0.0]),
    ] {
        let results = on_ranks(ranks, |comm| {
            let adam = catalog::get("adam").unwrap();
            let mut p = Array1::<f32>::from_elem(150_000, 0.5).into_dyn();
            let before = p.clone();
            let mut stepper = ShardedStepper::new(&adam, &[&p], comm.clone()).unwrap();
            let mut g = Array1::<f32>::from_elem(150_000, 0.1).into_dyn();
            g[[at]] = values[comm.rank()];
            let refused = stepper.step(&mut [&mut p], &[&g]).unwrap_err().to_string();
            (refused, p == before && stepper.t() == 0)
        });
        for (refused, unchanged) in results {
            assert!(refused.contains(&at.to_string()), "{refused}");
            assert!(unchanged);
        }
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

/// Steps `stepper` with `grad` on rank 0 and zeros elsewhere (summed, so
/// every rank count sees exactly `grad`).
fn step_with_rank0_gradient(
    stepper: &mut ShardedStepper<f32>,
    comm: &dyn Collective,
    params: &mut [ArrayD<f32>],
    grads: &[ArrayD<f32>],
) {
    let zeros: Vec<ArrayD<f32>> = grads.iter().map(|g| ArrayD::zeros(g.raw_dim())).collect();
    let given = if comm.rank() == 0 { grads } else { &zeros[..] };
    let g: Vec<&dyn lensopt::TensorRef<f32>> = given.iter().map(|g| g as _).collect();
    let mut p: Vec<&mut dyn lensopt::TensorMut<f32>> = params.iter_mut().map(|p| p as _).collect();
    stepper.step(&mut p, &g).unwrap();
}

fn checkpoint_case() -> (Vec<ArrayD<f32>>, Vec<Vec<ArrayD<f32>>>) {
    let sizes = [2 * 65_536 + 5, 17, 65_536];
    let mut rng = lensopt::diagram::plan::SplitMix(4);
    let mut draw = |n: usize| {
        Array1::from_shape_fn(n, |_| {
            (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .into_dyn()
    };
    let params = sizes.iter().map(|&n| draw(n)).collect();
    let grads = (0..4)
        .map(|_| sizes.iter().map(|&n| draw(n)).collect())
        .collect();
    (params, grads)
}

/// A run saved on 3 ranks resumes on 2 and on 1, and goes on bit for bit as
/// the run that never stopped; an incomplete directory is refused.
#[test]
fn sharded_checkpoints_reshard_and_resume_bit_for_bit() {
    use lensopt::dist::GradientReduction;
    let dir = std::env::temp_dir().join(format!("lensopt-dist-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for name in ["lamb", "adam", "muon"] {
        let saved = dir.join(name);
        let (initial, grads) = checkpoint_case();
        let initial: Vec<ArrayD<f32>> = if name == "muon" {
            vec![ArrayD::from_shape_fn(ndarray::IxDyn(&[12, 20]), |i| {
                (i[0] * 20 + i[1]) as f32 * 1e-3
            })]
        } else {
            initial
        };
        let grads: Vec<Vec<ArrayD<f32>>> = if name == "muon" {
            (0..4)
                .map(|s| {
                    vec![ArrayD::from_shape_fn(ndarray::IxDyn(&[12, 20]), |i| {
                        ((i[0] * 7 + i[1] * 3 + s) % 11) as f32 - 5.0
                    })]
                })
                .collect()
        } else {
            grads
        };
        let run = |ranks: usize, resume: bool| {
            on_ranks(ranks, |comm| {
                let opt = catalog::get(name).unwrap();
                let mut params = initial.clone();
                let refs: Vec<&dyn lensopt::TensorRef<f32>> =
                    params.iter().map(|p| p as _).collect();
                let mut s = ShardedStepper::new(&opt, &refs, comm.clone()).unwrap();
                s.set_gradient_reduction(GradientReduction::Sum);
                let names: Vec<String> = (0..params.len()).map(|k| format!("w{k}")).collect();
                if resume {
                    let mut named: Vec<(&str, &mut dyn lensopt::TensorMut<f32>)> = names
                        .iter()
                        .map(|n| n.as_str())
                        .zip(params.iter_mut().map(|p| p as _))
                        .collect();
                    s.load(&saved, &mut named).map_err(|e| e.to_string())?;
                } else {
                    for g in &grads[..2] {
                        step_with_rank0_gradient(&mut s, comm.as_ref(), &mut params, g);
                    }
                    let named: Vec<(&str, &dyn lensopt::TensorRef<f32>)> = names
                        .iter()
                        .map(|n| n.as_str())
                        .zip(params.iter().map(|p| p as _))
                        .collect();
                    s.save(&saved, &named, &Default::default())
                        .map_err(|e| e.to_string())?;
                }
                for g in &grads[2..] {
                    step_with_rank0_gradient(&mut s, comm.as_ref(), &mut params, g);
                }
                let states: Vec<Vec<f32>> = (0..params.len())
                    .flat_map(|k| {
                        opt.rule()
                            .states
                            .iter()
                            .map(|d| s.gather_state(k, &d.name).unwrap().unwrap())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                Ok::<_, String>((params, states, s.t()))
            })
        };
        let straight = run(3, false).remove(0).unwrap();
        for ranks in [2, 1, 4] {
            for r in run(ranks, true) {
                assert_eq!(r.unwrap(), straight, "{name}: resumed on {ranks} ranks");
            }
        }
        // Without its completion mark the directory is refused on every rank.
        std::fs::remove_file(saved.join("COMPLETE")).unwrap();
        for r in run(2, true) {
            assert!(r.unwrap_err().contains("not a complete"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank that dies in the middle of training: the others' next step fails
/// at once with an error naming it, and the last complete checkpoint loads.
#[test]
fn a_rank_dying_mid_training_leaves_the_last_checkpoint_loadable() {
    let dir = std::env::temp_dir().join(format!("lensopt-dist-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (initial, grads) = checkpoint_case();
    let results = on_ranks(2, |comm| {
        let opt = catalog::get("adam").unwrap();
        let mut params = initial.clone();
        let refs: Vec<&dyn lensopt::TensorRef<f32>> = params.iter().map(|p| p as _).collect();
        let mut s = ShardedStepper::new(&opt, &refs, comm.clone()).unwrap();
        step_with_rank0_gradient(&mut s, comm.as_ref(), &mut params, &grads[0]);
        let named: Vec<(&str, &dyn lensopt::TensorRef<f32>)> = ["a", "b", "c"]
            .into_iter()
            .zip(params.iter().map(|p| p as _))
            .collect();
        s.save(&dir, &named, &Default::default()).unwrap();
        if comm.rank() == 1 {
            return None; // dies: its end of the group is dropped
        }
        let started = std::time::Instant::now();
        let g: Vec<&dyn lensopt::TensorRef<f32>> = grads[1].iter().map(|g| g as _).collect();
        let mut p: Vec<&mut dyn lensopt::TensorMut<f32>> =
            params.iter_mut().map(|p| p as _).collect();
        let e = s.step(&mut p, &g).unwrap_err().to_string();
        Some((e, started.elapsed()))
    });
    let (e, took) = results[0].clone().unwrap();
    assert!(e.contains("rank 1 left"), "{e}");
    assert!(took < Duration::from_secs(10));
    let loaded = on_ranks(1, |comm| {
        let opt = catalog::get("adam").unwrap();
        let mut params: Vec<ArrayD<f32>> =
            initial.iter().map(|p| ArrayD::zeros(p.raw_dim())).collect();
        let refs: Vec<&dyn lensopt::TensorRef<f32>> = params.iter().map(|p| p as _).collect();
        let mut s = ShardedStepper::new(&opt, &refs, comm).unwrap();
        let mut named: Vec<(&str, &mut dyn lensopt::TensorMut<f32>)> = ["a", "b", "c"]
            .into_iter()
            .zip(params.iter_mut().map(|p| p as _))
            .collect();
        s.load(&dir, &mut named)
            .map_err(|e| e.to_string())
            .map(|_| s.t())
    });
    assert_eq!(loaded[0], Ok(1));
    let _ = std::fs::remove_dir_all(&dir);
}
