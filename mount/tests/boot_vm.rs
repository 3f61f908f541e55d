//! The boot test, in a real VM (QEMU; TCG, see [`accelerator`]): a Debian root built with mmdebstrap, with systemd as
//! PID 1 and the project's `.deb` installed. The guest's `tests/vm/sc-vm-test` runs one stage per
//! boot: it adds a volume with `--mount`, writes files and takes copies; after a clean reboot it
//! checks that a unit ordered after the daemon found the filesystem mounted through `live`, that
//! files and copies are intact and not stale, syncs more files and hard-resets the VM; after the
//! reset it checks the synced files, the copies and `e2fsck -fn` of the filesystem. The host
//! reads the verdicts from the serial console. Nothing is cached outside the test's temporary
//! directory (CI builds the root every time, in about a minute).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::built_package;
use shadowcopy::testing::system::{mkfs_ext4, require_commands, run, TempDir};

/// A QEMU process, killed on drop.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vm")
}

/// Builds the guest's root filesystem image; returns (kernel, initrd, image).
fn build_guest(dir: &TempDir, deb: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let root = dir.join("root");
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["900", "mmdebstrap", "--variant=apt", "--mode=root", "--quiet"])
        .arg("--include=systemd-sysv,udev,kmod,linux-image-amd64,e2fsprogs,fuse3,util-linux,mount,init-system-helpers,procps")
        .args(["bookworm", root.to_str().unwrap(), "http://deb.debian.org/debian"])
        .output()
        .expect("running mmdebstrap");
    assert!(out.status.success(), "mmdebstrap: {}", String::from_utf8_lossy(&out.stderr));
    println!("guest root built by mmdebstrap in {:.0?}", started.elapsed());
    std::fs::copy(deb, root.join("tmp/shadowcopy.deb")).unwrap();
    run("chroot", &[root.to_str().unwrap(), "dpkg", "-i", "/tmp/shadowcopy.deb"]);
    std::fs::remove_file(root.join("tmp/shadowcopy.deb")).unwrap();
    let install = |from: &str, to: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(vm_files().join(from), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    install("sc-vm-test", "usr/local/sbin/sc-vm-test", 0o755);
    install("sc-vm-test.service", "etc/systemd/system/sc-vm-test.service", 0o644);
    install("data-user.service", "etc/systemd/system/data-user.service", 0o644);
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    for unit in ["sc-vm-test.service", "data-user.service"] {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit)).unwrap();
    }
    // The serial console is the test's; no login prompt on it.
    std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/serial-getty@ttyS0.service")).unwrap();
    std::fs::write(root.join("etc/fstab"), "/dev/vda / ext4 rw,errors=remount-ro 0 1\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "scvm\n").unwrap();
    let boot = std::fs::read_dir(root.join("boot")).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>();
    let pick = |prefix: &str| boot.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).cloned();
    let (kernel, initrd) = (pick("vmlinuz-").expect("a kernel in the guest"), pick("initrd.img-").expect("an initrd in the guest"));
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    std::fs::copy(kernel, &k).unwrap();
    std::fs::copy(initrd, &i).unwrap();
    let image = dir.join("root.img");
    mkfs_ext4(&image, "3G", Some(&root), &[]);
    let _ = std::fs::remove_dir_all(&root);
    (k, i, image)
}

/// How QEMU runs the guest: TCG by default, KVM with `SHADOWCOPY_VM_ACCEL=kvm`. On this machine
/// kind `/dev/kvm` opens and creates VMs, but a guest kernel never gets past SeaBIOS (no console
/// output at all, with `earlyprintk` and any `-cpu` model; KVM's CPUID lacks even `pni`), while
/// TCG boots the same image to userspace in about 40 s.
fn accelerator() -> Vec<&'static str> {
    match std::env::var("SHADOWCOPY_VM_ACCEL").as_deref() {
        Ok("kvm") => vec!["-accel", "kvm", "-cpu", "host"],
        _ => vec!["-accel", "tcg,thread=multi", "-cpu", "max"],
    }
}

/// Boots the guest once (until it powers off, reboots or resets: `-no-reboot`); its console.
fn boot(dir: &TempDir, kernel: &Path, initrd: &Path, image: &Path, n: u32) -> String {
    let log = dir.join(&format!("console-{n}.log"));
    let child = Command::new("qemu-system-x86_64")
        .args(accelerator())
        .args(["-m", "1024", "-smp", "2", "-no-reboot", "-nic", "none", "-display", "none"])
        .args(["-monitor", "none", "-serial", &format!("file:{}", log.display())])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0"])
        .args(["-drive", &format!("file={},if=virtio,format=raw,cache=writeback", image.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut vm = Vm(child);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(420);
    loop {
        if let Some(status) = vm.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = vm.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "qemu exited with {status}: {err}");
            break;
        }
        if Instant::now() > deadline {
            panic!("boot {n} did not end within 420 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    println!("boot {n}: {:.1?}", started.elapsed());
    for l in console.lines().filter(|l| l.starts_with("SCVM: ")) {
        println!("  {l}");
    }
    console
}

#[test]
fn a_volume_mounted_at_boot_survives_a_reboot_and_a_hard_reset_in_a_vm() {
    require_commands(&["mmdebstrap", "qemu-system-x86_64", "mkfs.ext4", "chroot", "timeout"]);
    let deb = built_package();
    let dir = TempDir::new("sc-vm-");
    let (kernel, initrd, image) = build_guest(&dir, &deb);
    for (stage, what) in [(1, "stage 1 ok"), (2, "stage 2 ok"), (3, "stage 3 ok")] {
        let console = boot(&dir, &kernel, &initrd, &image, stage);
        let verdicts: Vec<&str> = console.lines().filter(|l| l.starts_with("SCVM: ")).collect();
        assert!(!verdicts.iter().any(|l| l.starts_with("SCVM: FAIL")), "boot {stage} failed:\n{}", verdicts.join("\n"));
        assert!(
            verdicts.iter().any(|l| l.starts_with(&format!("SCVM: {what}"))),
            "boot {stage} did not report `{what}`:\n{}",
            console.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        if stage == 3 {
            assert!(verdicts.contains(&"SCVM: ALL OK"), "{}", verdicts.join("\n"));
        }
    }
}
