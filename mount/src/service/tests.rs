//! The service's contract, run without root, FUSE or a daemon: the executable form of the error
//! table in `docs/protocol.md` (one test per kind of refusal), and one message per failure
//! whichever operation meets it.

use std::path::{Path, PathBuf};

use shadowcopy::protocol::{Answer, CreateRequest, DeleteTarget, ErrorKind, ErrorReply, Op, Reply};
use uuid::Uuid;

use super::{Service, Settings};
use crate::expose::Place;
use crate::state::StateDir;

/// A service over a temporary state directory; the mount path is never mounted.
struct Fixture {
    dir: tempfile::TempDir,
    svc: Service,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateDir::lock(&dir.path().join("state")).expect("state dir");
        let settings = Settings { cache_chunks: 16, ..Settings::new(dir.path().join("mnt")) };
        Fixture { svc: Service::start(state, settings), dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A zero-filled image file of `size` bytes.
    fn image(&self, name: &str, size: u64) -> String {
        let p = self.path(name);
        std::fs::File::create(&p).and_then(|f| f.set_len(size)).expect("image");
        p.display().to_string()
    }

    fn call(&self, op: Op) -> Reply {
        self.svc.handle(op, &mut |_, _| {}, &mut |_| {}, &mut |_| {}, &|| true)
    }

    fn ok(&self, op: Op) -> Answer {
        match self.call(op) {
            Reply::Ok(a) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn err(&self, op: Op) -> ErrorReply {
        match self.call(op) {
            Reply::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn add(&self, name: &str, image: &str) -> Answer {
        self.ok(add_op(name, image))
    }

    /// One persistent copy of `volume`; its id.
    fn create(&self, volume: &str) -> Uuid {
        let req = CreateRequest { persistent: Some(true), ..CreateRequest::new(vec![volume.into()]) };
        match self.ok(Op::Create(req)) {
            Answer::Set(s) => s.copies[0].id,
            other => panic!("{other:?}"),
        }
    }
}

fn add_op(name: &str, image: &str) -> Op {
    add_op_with(name, image, None, None, false)
}

fn add_op_with(name: &str, image: &str, diff_area: Option<String>, max_size: Option<&str>, read_only: bool) -> Op {
    Op::VolumeAdd {
        name: name.into(),
        image: image.into(),
        diff_area,
        max_size: max_size.map(Into::into),
        chunk_size: None,
        read_only,
        attach: None,
    }
}

#[test]
fn a_volume_is_added_copied_listed_and_deleted() {
    let f = Fixture::new();
    f.add("data", &f.image("data.img", 64 << 20));
    let id = f.create("data");
    match f.ok(Op::List { volume: Some("data".into()) }) {
        Answer::Copies(c) => assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), [id]),
        other => panic!("{other:?}"),
    }
    match f.ok(Op::Delete { target: DeleteTarget::Id(id) }) {
        Answer::Copies(c) => assert_eq!(c[0].id, id),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.ok(Op::List { volume: None }), Answer::Copies(c) if c.is_empty()));
}

#[test]
fn bad_requests() {
    let f = Fixture::new();
    let image = f.image("v.img", 64 << 20);
    for bad in ["", ".hidden", "@GMT", "-x", "a/b", "with space", &"x".repeat(65)] {
        let e = f.err(add_op(bad, &image));
        assert_eq!(e.kind, ErrorKind::BadRequest, "{bad:?}: {}", e.message);
        assert!(e.message.contains("invalid volume name"), "{}", e.message);
    }
    let e = f.err(add_op_with("ro", &image, None, Some("1G"), true));
    assert_eq!((e.kind, e.message.contains("read-only volume has no diff area")), (ErrorKind::BadRequest, true), "{}", e.message);
    let e = f.err(add_op_with("v", &image, None, Some("lots"), false));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    let e = f.err(Op::WriterAnswer { seq: 1, outcome: shadowcopy::protocol::WriterOutcome::Ok });
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    let e = f.err(Op::Create(CreateRequest::new(vec![])));
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::BadRequest, "name at least one volume"));
}

#[test]
fn paths_inside_the_mount_are_refused() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("mnt")).unwrap();
    let inside = f.image("mnt/inside.img", 64 << 20);
    let e = f.err(add_op("v", &inside));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    assert!(e.message.contains("inside the daemon's mount"), "{}", e.message);
    let outside = f.image("outside.img", 64 << 20);
    let diff_area = f.path("mnt/diff").display().to_string();
    let e = f.err(add_op_with("v", &outside, Some(diff_area), None, false));
    assert!(e.kind == ErrorKind::BadRequest && e.message.contains("the diff area"), "{}", e.message);
}

#[test]
fn names_and_images_are_taken_once() {
    let f = Fixture::new();
    let (a, b) = (f.image("a.img", 64 << 20), f.image("b.img", 64 << 20));
    f.add("a", &a);
    let e = f.err(add_op("a", &b));
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::AlreadyExists, "a volume named `a` is already registered"));
    let e = f.err(add_op("b", &a));
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{}", e.message);
    assert!(e.message.contains("already registered as volume `a`"), "{}", e.message);
    // A diff area left where the next volume's would go.
    let diff = f.path("used-diff");
    f.add("c", &f.image("c.img", 64 << 20));
    let Answer::Volumes(v) = f.ok(Op::VolumeList) else { panic!() };
    let c_diff = v.iter().find(|v| v.name == "c").unwrap().diff_area.clone();
    std::fs::create_dir_all(&diff).unwrap();
    std::fs::copy(Path::new(&c_diff).join("journal.0"), diff.join("journal.0")).unwrap();
    let e = f.err(add_op_with("d", &b, Some(diff.display().to_string()), None, false));
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{}", e.message);
    assert!(e.message.contains("already holds a diff area"), "{}", e.message);
}

#[test]
fn what_is_not_there_is_not_found_with_one_message_per_thing() {
    let f = Fixture::new();
    f.add("empty", &f.image("e.img", 64 << 20));
    let no_volume = "no volume named `nosuch` (see `shadowcopy volume list`)";
    for op in [
        Op::List { volume: Some("nosuch".into()) },
        Op::Delete { target: DeleteTarget::Oldest("nosuch".into()) },
        Op::Delete { target: DeleteTarget::All("nosuch".into()) },
        Op::VolumeRemove { name: "nosuch".into() },
        Op::StorageResize { volume: "nosuch".into(), max_size: "1G".into() },
        Op::Create(CreateRequest::new(vec!["nosuch".into()])),
    ] {
        let what = format!("{op:?}");
        let e = f.err(op);
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NotFound, no_volume), "{what}");
    }
    let id = Uuid::new_v4();
    let no_copy = format!("no shadow copy {id} (see `shadowcopy list`)");
    for op in [
        Op::Delete { target: DeleteTarget::Id(id) },
        Op::Export { id, path: f.path("x.img").display().to_string() },
        Op::Revert { id },
        Op::Diff { id, to: None },
        Op::Expose { id, at: None, device: true, force: false },
    ] {
        let what = format!("{op:?}");
        let e = f.err(op);
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NotFound, no_copy.as_str()), "{what}");
    }
    for op in [Op::Delete { target: DeleteTarget::Set(id) }, Op::BackupComplete { set_id: id }] {
        let e = f.err(op);
        assert_eq!((e.kind, e.message), (ErrorKind::NotFound, format!("no shadow copy set {id} (see `shadowcopy list`)")));
    }
    // Nothing to delete is done, not an error (issue 12: `delete --all` on an empty volume).
    for target in [DeleteTarget::Oldest("empty".into()), DeleteTarget::All("empty".into())] {
        assert!(matches!(f.ok(Op::Delete { target }), Answer::Copies(c) if c.is_empty()));
    }
    let e = f.err(add_op("v", &f.path("missing.img").display().to_string()));
    assert_eq!(e.kind, ErrorKind::NotFound, "{}", e.message);
}

#[test]
fn a_read_only_volume_serves_copies_it_found_and_takes_none() {
    let f = Fixture::new();
    let image = f.image("ro.img", 64 << 20);
    f.ok(add_op_with("ro", &image, None, None, true));
    let e = f.err(Op::Create(CreateRequest::new(vec!["ro".into()])));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    assert!(e.message.starts_with("volume `ro` is read-only"), "{}", e.message);
}

#[test]
fn an_open_live_file_makes_remove_and_revert_busy() {
    let f = Fixture::new();
    f.add("v", &f.image("v.img", 64 << 20));
    let id = f.create("v");
    let v = f.svc.volume("v").unwrap();
    v.live_opened(None);
    for (op, action) in [(Op::VolumeRemove { name: "v".into() }, "removing the volume"), (Op::Revert { id }, "reverting")] {
        let e = f.err(op);
        assert_eq!(e.kind, ErrorKind::Busy, "{}", e.message);
        assert!(e.message.contains("live is open") && e.message.ends_with(action), "{}", e.message);
    }
    v.live_released();
    assert!(matches!(f.ok(Op::Revert { id }), Answer::Done(_)));
}

#[test]
fn an_exposed_copy_cannot_be_deleted_nor_its_volume_removed() {
    let f = Fixture::new();
    f.add("v", &f.image("v.img", 64 << 20));
    let id = f.create("v");
    f.svc.exposures.record(id, Place::Device("/dev/loop99".into()));
    let expected = format!("shadow copy {id} is exposed at /dev/loop99; undo that first (`shadowcopy unexpose PATH`)");
    for op in [
        Op::Delete { target: DeleteTarget::Id(id) },
        Op::Delete { target: DeleteTarget::All("v".into()) },
        Op::VolumeRemove { name: "v".into() },
    ] {
        let what = format!("{op:?}");
        let e = f.err(op);
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Busy, expected.as_str()), "{what}");
    }
}

#[test]
fn an_export_never_overwrites() {
    let f = Fixture::new();
    f.add("v", &f.image("v.img", 64 << 20));
    let id = f.create("v");
    let existing = f.image("existing.img", 1);
    let e = f.err(Op::Export { id, path: existing.clone() });
    assert_eq!((e.kind, e.message), (ErrorKind::AlreadyExists, format!("{existing} exists; choose a new file name")));
    assert_eq!(std::fs::metadata(&existing).unwrap().len(), 1, "untouched");
}

#[test]
fn the_registry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).unwrap();
    let settings = Settings { cache_chunks: 16, ..Settings::new(dir.path().join("mnt")) };
    let (id, name) = {
        let svc = Service::start(StateDir::lock(&dir.path().join("state")).unwrap(), settings.clone());
        let f = |op| svc.handle(op, &mut |_, _| {}, &mut |_| {}, &mut |_| {}, &|| true);
        assert!(matches!(f(add_op("v", image.to_str().unwrap())), Reply::Ok(_)));
        let req = CreateRequest { persistent: Some(true), ..CreateRequest::new(vec!["v".into()]) };
        let Reply::Ok(Answer::Set(s)) = f(Op::Create(req)) else { panic!() };
        svc.flush_all();
        (s.copies[0].id, s.copies[0].exposed_name.clone())
    };
    let svc = Service::start(StateDir::lock(&dir.path().join("state")).unwrap(), settings);
    let Reply::Ok(Answer::Copies(c)) = svc.handle(Op::List { volume: None }, &mut |_, _| {}, &mut |_| {}, &mut |_| {}, &|| true) else {
        panic!()
    };
    assert_eq!(c.iter().map(|c| (c.id, c.exposed_name.clone())).collect::<Vec<_>>(), [(id, name)]);
}

/// Pins the bug where the `@GMT` name of a deleted copy could be given to a later copy (Samba
/// clients and people who noted the name were then shown other data under it), also across a
/// restart.
#[test]
fn a_name_once_used_on_a_volume_is_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).unwrap();
    let settings = Settings { cache_chunks: 16, ..Settings::new(dir.path().join("mnt")) };
    let call = |svc: &Service, op| svc.handle(op, &mut |_, _| {}, &mut |_| {}, &mut |_| {}, &|| true);
    let create = |svc: &Service| {
        let req = CreateRequest { persistent: Some(true), ..CreateRequest::new(vec!["v".into()]) };
        match call(svc, Op::Create(req)) {
            Reply::Ok(Answer::Set(s)) => (s.copies[0].id, s.copies[0].exposed_name.clone()),
            other => panic!("{other:?}"),
        }
    };
    let mut used = Vec::new();
    {
        let svc = Service::start(StateDir::lock(&dir.path().join("state")).unwrap(), settings.clone());
        assert!(matches!(call(&svc, add_op("v", image.to_str().unwrap())), Reply::Ok(_)));
        // Taken and deleted within one second: the next copy must not get the same name.
        for _ in 0..3 {
            let (id, name) = create(&svc);
            assert!(matches!(call(&svc, Op::Delete { target: DeleteTarget::Id(id) }), Reply::Ok(_)));
            assert!(!used.contains(&name), "{name} was given twice: {used:?}");
            used.push(name);
        }
        // No flush_all: the deletes alone must have made the names durable.
    }
    let svc = Service::start(StateDir::lock(&dir.path().join("state")).unwrap(), settings);
    let (_, name) = create(&svc);
    assert!(!used.contains(&name), "after a restart, {name} was given again: {used:?}");
    assert!(used.iter().all(|u| u < &name), "names only grow: {used:?} then {name}");
}

/// Pins a bug (issue 12): a failed `volume add` (an invalid chunk size) left its diff area
/// behind, and every retry was refused with "already holds a diff area".
#[test]
fn a_failed_volume_add_leaves_nothing_behind() {
    let f = Fixture::new();
    let image = f.image("v.img", 64 << 20);
    let bad = Op::VolumeAdd {
        name: "v".into(),
        image: image.clone(),
        diff_area: None,
        max_size: None,
        chunk_size: Some(3000),
        read_only: false,
        attach: None,
    };
    let e = f.err(bad);
    assert_eq!(e.kind, ErrorKind::Failed, "{}", e.message);
    assert!(e.message.contains("chunk"), "{}", e.message);
    assert!(matches!(f.ok(Op::VolumeList), Answer::Volumes(v) if v.is_empty()), "nothing registered");
    f.add("v", &image);
}

/// The clock of [`the_schedule_takes_copies_and_retention_keeps_what_the_policy_says`]: Unix
/// seconds the test moves forward.
static FAKE_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fake_clock() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(FAKE_NOW.load(std::sync::atomic::Ordering::SeqCst))
}

fn copies(f: &Fixture, volume: &str) -> Vec<shadowcopy::protocol::CopyView> {
    match f.ok(Op::List { volume: Some(volume.into()) }) {
        Answer::Copies(c) => c,
        other => panic!("{other:?}"),
    }
}

/// Three days of a daemon's timer, in half-hour steps, with an hourly schedule that keeps 3
/// hourly and 2 daily copies: the schedule takes one copy per hour, and retention leaves exactly
/// what the policy keeps, plus the copies it does not own and the exposed one.
#[test]
fn the_schedule_takes_copies_and_retention_keeps_what_the_policy_says() {
    use shadowcopy::protocol::{EventKind, Keep, Policy};
    use std::sync::atomic::Ordering::SeqCst;
    // 2026-12-02 00:10:00 UTC.
    const T0: u64 = 1_796_169_600 + 600;
    FAKE_NOW.store(T0, SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::lock(&dir.path().join("state")).unwrap();
    let svc = Service::start(state, Settings { cache_chunks: 16, clock: fake_clock, ..Settings::new(dir.path().join("mnt")) });
    let f = Fixture { svc, dir };
    f.add("v", &f.image("v.img", 64 << 20));
    // A copy taken by hand, before the policy: not the policy's, never deleted by it.
    let by_hand = f.create("v");
    let keep = Keep { hourly: 3, daily: 2, ..Keep::default() };
    let policy = Policy { schedule: Some("hourly".into()), keep };
    let Answer::Policies(p) = f.ok(Op::PolicySet { volume: "v".into(), policy: Some(policy.clone()) }) else { panic!() };
    assert_eq!(p[0].next_copy_unix, Some(T0), "the first copy is due at once");
    let mut exposed = None;
    for step in 0..144u64 {
        FAKE_NOW.store(T0 + step * 1800, SeqCst);
        f.svc.tick();
        if step == 1 {
            // The first scheduled copy is exposed: retention must leave it.
            let first = copies(&f, "v").into_iter().find(|c| c.cleanup).expect("a scheduled copy");
            f.svc.exposures.record(first.id, Place::Device("/dev/loop98".into()));
            exposed = Some(first.id);
        }
    }
    let now_copies = copies(&f, "v");
    let scheduled: Vec<u64> = now_copies.iter().filter(|c| c.cleanup).map(|c| c.created_unix as u64).collect();
    let hour = |h: u64| 1_796_169_600 + h * 3600 + 600;
    // The exposed first copy (hour 0), the first copies of days 2 and 3 (hours 24 and 48), and
    // of the last three hours (69, 70, 71).
    assert_eq!(scheduled, [0, 24, 48, 69, 70, 71].map(hour));
    assert!(now_copies.iter().any(|c| c.id == by_hand && !c.cleanup), "the copy taken by hand stays");
    assert!(now_copies.iter().any(|c| Some(c.id) == exposed), "the exposed copy stays");
    assert!(now_copies.iter().filter(|c| c.cleanup).all(|c| c.description.as_deref() == Some("timeline (hourly)")));
    // Every deletion is an event with its reason; every scheduled copy was one too.
    let events = f.svc.events.since(None, usize::MAX);
    let count = |kind: EventKind, reason: Option<&str>| events.iter().filter(|e| e.kind == kind && e.reason.as_deref() == reason).count();
    assert_eq!(count(EventKind::CopyCreated, None), 1 + 72);
    assert_eq!(count(EventKind::CopyDeleted, Some("retention")), 72 - 6);
    // A dry run deletes nothing and says what it would; with nothing to do it names nothing.
    let Answer::Cleanup(c) = f.ok(Op::Cleanup { volume: "v".into(), dry_run: true }) else { panic!() };
    assert!(c.deleted.is_empty() && c.dry_run);
    assert_eq!((c.kept, c.kept_exposed), (5, 1));
    // The policy and the copies' notes survive a restart; the next copy is due at the next hour.
    let Fixture { svc, dir } = f;
    drop(svc);
    let state = StateDir::lock(&dir.path().join("state")).unwrap();
    let svc = Service::start(state, Settings { cache_chunks: 16, clock: fake_clock, ..Settings::new(dir.path().join("mnt")) });
    let f = Fixture { svc, dir };
    let Answer::Policies(p) = f.ok(Op::PolicyList) else { panic!() };
    assert_eq!(p[0].policy, policy);
    assert_eq!(p[0].next_copy_unix, Some(1_796_169_600 + 72 * 3600));
    assert_eq!(copies(&f, "v").iter().filter(|c| c.cleanup).count(), 6);
    // A policy that keeps nothing is refused; removing the policy leaves its copies.
    let e = f.err(Op::PolicySet { volume: "v".into(), policy: Some(Policy { schedule: Some("hourly".into()), keep: Keep::default() }) });
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    f.ok(Op::PolicySet { volume: "v".into(), policy: None });
    assert_eq!(copies(&f, "v").len(), 7);
    assert_eq!(f.err(Op::Cleanup { volume: "v".into(), dry_run: false }).kind, ErrorKind::BadRequest);
}

/// A copy the engine deletes because the diff area is full is an event, and the next request
/// that names the volume is told (once); labels and descriptions are kept with copies.
#[test]
fn a_copy_evicted_for_space_is_told_to_the_next_request_on_its_volume() {
    use shadowcopy::protocol::EventKind;
    let f = Fixture::new();
    f.ok(add_op_with("v", &f.image("v.img", 64 << 20), None, Some("1M"), false));
    f.add("w", &f.image("w.img", 64 << 20));
    let req = CreateRequest {
        persistent: Some(true),
        description: Some("before the upgrade".into()),
        labels: [("ticket".to_string(), "OPS-1".to_string())].into(),
        ..CreateRequest::new(vec!["v".into()])
    };
    let Answer::Set(set) = f.ok(Op::Create(req)) else { panic!() };
    let id = set.copies[0].id;
    assert_eq!(set.copies[0].labels["ticket"], "OPS-1");
    let mut notices = Vec::new();
    let call =
        |op, notices: &mut Vec<String>| f.svc.handle(op, &mut |_, _| {}, &mut |_| {}, &mut |n| notices.push(n.to_string()), &|| true);
    // Overwrite the volume 16 KiB at a time, looking after each write: the diff area is
    // reported nearly full before the copy is evicted, then more than it holds is written.
    let volume = f.svc.volume("v").unwrap();
    let engine = volume.system().unwrap();
    let kinds = |f: &Fixture| f.svc.events.since(None, 100).iter().map(|e| e.kind).collect::<Vec<_>>();
    for i in 0..256u64 {
        engine.write_at(&[0xab; 16 << 10], i << 14).unwrap();
        engine.flush().unwrap();
        call(Op::List { volume: Some("w".into()) }, &mut notices);
        if kinds(&f).contains(&EventKind::CopyDeleted) {
            break;
        }
    }
    let k = kinds(&f);
    let warned = k.iter().position(|e| *e == EventKind::DiffAreaNearlyFull).expect("a nearly-full event");
    let evicted = k.iter().position(|e| *e == EventKind::CopyDeleted).expect("the copy was evicted");
    assert!(warned < evicted, "{k:?}");
    // A request about another volume is not told.
    call(Op::List { volume: Some("w".into()) }, &mut notices);
    assert!(notices.is_empty(), "{notices:?}");
    call(Op::List { volume: Some("v".into()) }, &mut notices);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains(&id.to_string()) && notices[0].contains("diff area was full"), "{}", notices[0]);
    call(Op::List { volume: Some("v".into()) }, &mut notices);
    assert_eq!(notices.len(), 1, "told once");
    let events = f.svc.events.since(None, 100);
    assert!(events.iter().any(|e| e.kind == EventKind::CopyDeleted && e.copy == Some(id) && e.reason.as_deref() == Some("diff_area_full")));
    let bad = CreateRequest { labels: [("no spaces".to_string(), "x".to_string())].into(), ..CreateRequest::new(vec!["w".into()]) };
    assert_eq!(f.err(Op::Create(bad)).kind, ErrorKind::BadRequest);
}
