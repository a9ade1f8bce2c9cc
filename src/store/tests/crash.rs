//! A writer process is killed with SIGKILL at random moments; every write it acknowledged must
//! be there after reopening. The child is this test binary re-executed with an environment
//! variable that turns `crash_child` into the writer loop.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use super::super::{sha256_hex, PutOptions, SledStore, Store};
use super::{blob_path, item, new_collection, vector};

const CHILD_DIR_ENV: &str = "OMNIBIND_STORE_CRASH_DIR";
const CHILD_ROUND_ENV: &str = "OMNIBIND_STORE_CRASH_ROUND";
const ROUNDS: u64 = 4;

fn content_of(id: &str) -> Vec<u8> {
    format!("content of {id}").into_bytes()
}

fn k_of(id: &str) -> u64 {
    // ids are r<round>-<n>
    let (r, n) = id[1..].split_once('-').unwrap();
    r.parse::<u64>().unwrap() * 1_000_000 + n.parse::<u64>().unwrap()
}

/// The writer: runs only when re-executed by `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let s = SledStore::open(&dir).unwrap();
    let mut n = 0u64;
    let mut acked = Vec::new();
    for iteration in 0u64.. {
        let size = 1 + iteration % 4;
        let ids: Vec<String> = (0..size).map(|j| format!("r{round}-{}", n + j)).collect();
        n += size;
        let batch = ids
            .iter()
            .map(|id| {
                let modality = if k_of(id).is_multiple_of(2) {
                    "image"
                } else {
                    "audio"
                };
                item(Some(id), modality, Some(&content_of(id)), k_of(id))
            })
            .collect();
        s.put_items("c", batch, PutOptions::default()).unwrap();
        for id in &ids {
            println!("ack put {id}");
        }
        acked.extend(ids);
        if iteration % 5 == 4 {
            let victim = acked.remove(acked.len() / 2);
            // A kill during the delete leaves the item either present or absent.
            println!("begin del {victim}");
            s.delete_item("c", &victim).unwrap();
            println!("ack del {victim}");
        }
    }
}

fn verify(dir: &Path, puts: &BTreeSet<String>, dels: &BTreeSet<String>, begun: &BTreeSet<String>) {
    let s = SledStore::open(dir).unwrap();
    for id in puts.iter().filter(|id| !begun.contains(*id)) {
        let rec = s
            .get_item("c", id)
            .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"));
        assert_eq!(s.get_vector("c", rec.seq).unwrap(), vector(k_of(id)));
        let h = sha256_hex(&content_of(id));
        assert_eq!(rec.content_hash.as_deref(), Some(h.as_str()));
        assert_eq!(s.read_content("c", &h).unwrap(), content_of(id), "{id}");
        assert!(blob_path(dir, "c", &h).is_file());
    }
    for id in dels {
        assert!(
            s.get_item("c", id).is_err(),
            "acknowledged delete of {id} undone"
        );
        assert!(!blob_path(dir, "c", &sha256_hex(&content_of(id))).exists());
    }
    // Whatever unacknowledged writes made it, the store is consistent.
    let items = s.list_items("c", 10_000, None).unwrap().items;
    let counted: u64 = s.modality_counts("c").unwrap().values().sum();
    assert_eq!(counted as usize, items.len());
    assert_eq!(s.vectors("c").unwrap().count(), items.len());
    for rec in &items {
        assert_eq!(s.get_item_by_seq("c", rec.seq).unwrap().id, rec.id);
        s.read_content("c", rec.content_hash.as_deref().unwrap())
            .unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    SledStore::open(dir.path())
        .unwrap()
        .create_collection(new_collection("c"))
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut puts = BTreeSet::new();
    let mut dels = BTreeSet::new();
    let mut begun = BTreeSet::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::tests::crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match r.read_until(b'\n', &mut buf) {
                    // A line cut by the kill is not an acknowledgement.
                    Ok(_) if buf.ends_with(b"\n") => {
                        lines.push(String::from_utf8_lossy(&buf).trim_end().to_string())
                    }
                    _ => break,
                }
            }
            lines
        });
        // Kill at a random moment once the writer is running.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = puts.len();
        for line in &lines {
            if let Some(id) = line.strip_prefix("ack put ") {
                puts.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("ack del ") {
                dels.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("begin del ") {
                begun.insert(id.to_string());
            }
        }
        eprintln!(
            "round {round}: killed after {:?}, {} puts and {} deletes acknowledged so far",
            start.elapsed(),
            puts.len() - before,
            dels.len()
        );
        verify(dir.path(), &puts, &dels, &begun);
    }
    assert!(
        puts.len() >= 20,
        "the writer acknowledged only {} puts",
        puts.len()
    );
}
