"""Throughput against the baselines and the tools people use today, all in one run.

    python benchmarks/throughput.py                          # 2 GiB image, everything
    python benchmarks/throughput.py --size 512M --skip-peers --workdir /var/tmp/cb-tp

One image (a real ext4 filesystem of real files, see imagekit.py) goes through a fixed
sequence of states; at each state every tool backs it up, so each figure has its baselines
measured in the same run on the same data:

    S0  the new image                          full backups
    S1  S0 + 1% rewritten in 4 contiguous runs incrementals
    S2  S1 + new files written into the fs     incrementals
    S3  S2 + 4 KiB writes scattered over 1%    incrementals, then restore of S3

Engine chains: "cinderblock" reads every block (no hint); "cinderblock+hint" is a second
chain given a changed-extents file per step (what a change tracker such as a QEMU dirty bitmap
would produce; here computed by hashing the image at 4 KiB before and after each change,
outside the timed region). Peers: restic (compression auto) and Borg (zstd,3), installed with
apt-get when missing (the project's own install does not need them).

Full backups and restores run ``--repeat`` times per tool (default 3; each run listed, the
median reported): the machine is shared and single runs move by 10-15%.

Then: the scattered change at 64 KiB, 256 KiB and 1 MiB blocks (time and stored bytes), and a
full backup of an empty 1 TiB sparse image (time, peak RSS, manifest size).

Every repository lives on a fresh scratch ext4 filesystem (a loop device, as a dedicated
backup disk would be; see imagekit.scratch_filesystem for why). ``--repos workdir`` puts them
in the work directory instead; with the scratch filesystem one extra row shows the engine's
full backup into a repository on the work directory's filesystem, so the difference is on
record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid

from imagekit import (
    MiB,
    build_image,
    cat_to_null,
    contiguous_change,
    du,
    file_level_change,
    parse_size,
    scattered_change,
    scratch_filesystem,
    timed,
    warm,
    zstd_compress,
    zstd_decompress,
)

from engine import BackupEngine, native

PROJECT = "bench"
ROWS: list[dict] = []


def row(tool: str, step: str, seconds: float, nbytes: int, **extra) -> dict:
    r = {"tool": tool, "step": step, "seconds": seconds, "mb_per_s": nbytes / seconds / 1e6}
    r.update(extra)
    ROWS.append(r)
    print(
        f"  {tool:<18} {step:<22} {seconds:7.2f}s  {r['mb_per_s']:7.0f} MB/s  "
        + " ".join(f"{k}={v}" for k, v in extra.items()),
        flush=True,
    )
    return r


class EngineChain:
    level = 3

    def __init__(self, root: str, image: str, block_size: int = 1 << 20) -> None:
        self.eng = BackupEngine.open(root, block_size=block_size, compression_level=self.level)
        self.vid = str(uuid.uuid4())
        self.eng.register_volume(PROJECT, self.vid, image, attached=False)
        self.root = root
        self.last: dict | None = None

    def backup(self, incremental: bool, extents: list | None = None) -> tuple[float, dict]:
        def run() -> dict:
            body = {"backup": {"volume_id": self.vid, "incremental": incremental}}
            # The hint lists what changed since the last backup (a superset of it when the
            # previous step already backed the change up): bound to that backup, as a
            # change tracker's would be.
            hint = {}
            if extents is not None and self.last is not None:
                hint = {"changed_extents": extents, "changes_base": self.last["id"]}
            bid = self.eng.create_backup(PROJECT, body, **hint)["backup"]["id"]
            done = self.eng.wait(bid)
            if done["status"] != "available":
                raise SystemExit(f"backup failed: {done['fail_reason']}")
            return done

        secs, done = timed(run)
        self.last = done
        return secs, done

    def restore(self, target: str) -> float:
        secs, _ = timed(lambda: self.eng.restore_backup(PROJECT, self.last["id"], target))
        return secs

    def stored(self) -> int:
        return du(os.path.join(self.root, "projects"))

    def close(self) -> None:
        self.eng.close()


class Restic:
    name = "restic"

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": repo + ".cache"}
        self._run("init", "--repository-version", "2")

    def _run(self, *args: str, cwd: str | None = None) -> None:
        subprocess.run(
            ["restic", "-q", "-r", self.repo, *args],
            env=self.env,
            cwd=cwd,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def backup(self, image: str) -> float:
        d, f = os.path.split(image)
        return timed(lambda: self._run("backup", "--compression", "auto", f, cwd=d))[0]

    def restore(self, target_dir: str) -> float:
        return timed(lambda: self._run("restore", "latest", "--target", target_dir))[0]

    def stored(self) -> int:
        return du(self.repo)


class Borg:
    name = "borg"

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.env = {
            **os.environ,
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_CACHE_DIR": repo + ".cache",
            "BORG_BASE_DIR": repo + ".base",
        }
        self.n = 0
        subprocess.run(
            ["borg", "init", "-e", "none", repo], env=self.env, check=True, capture_output=True
        )

    def backup(self, image: str) -> float:
        d, f = os.path.split(image)
        self.n += 1
        cmd = ["borg", "create", "--compression", "zstd,3", f"{self.repo}::s{self.n}", f]
        return timed(
            lambda: subprocess.run(cmd, env=self.env, cwd=d, check=True, capture_output=True)
        )[0]

    def restore(self, target_dir: str) -> float:
        os.makedirs(target_dir, exist_ok=True)
        cmd = ["borg", "extract", "--sparse", f"{self.repo}::s{self.n}"]
        return timed(
            lambda: subprocess.run(
                cmd, env=self.env, cwd=target_dir, check=True, capture_output=True
            )
        )[0]

    def stored(self) -> int:
        return du(self.repo)


def ensure_peers() -> bool:
    if shutil.which("restic") and shutil.which("borg"):
        return True
    print("installing restic and borgbackup with apt-get (benchmark only)", flush=True)
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "restic", "borgbackup"], capture_output=True
    )
    return r.returncode == 0 and bool(shutil.which("restic") and shutil.which("borg"))


def _fmt(times: list[float]) -> str:
    return "/".join(f"{t:.2f}" for t in times)


def tracker_extents(before: tuple, image: str) -> list:
    """Extents whose 4 KiB blocks changed since ``before`` (a change tracker's view)."""
    after = native.scan_file(image, 4096, 0)
    n = min(len(before[0]), len(after[0]))
    changed = native.diff(after[0][:n], after[1][:n], before[0][:n], before[1][:n])
    return [[int(f) * 4096, int(c) * 4096] for f, c in native.mask_to_runs(changed).tolist()]


def sparse_terabyte(work: str, repos: str) -> dict:
    code = f"""
import json, os, time, uuid
from engine import BackupEngine
img = {os.path.join(work, "empty-1T.img")!r}
with open(img, 'wb') as f:
    f.truncate(1 << 40)
eng = BackupEngine.open({os.path.join(repos, "repo-1T")!r})
vid = str(uuid.uuid4()); eng.register_volume('p', vid, img)
t = time.perf_counter()
bid = eng.create_backup('p', {{'backup': {{'volume_id': vid}}}})['backup']['id']
done = eng.wait(bid)
secs = time.perf_counter() - t
manifest = eng.repo.store.stat(eng.repo.container('p', 'backups').keys.manifest(bid)).size
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the
# benchmark's own (parent) process when the child was spawned with vfork.
peak_kib = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
eng.close(); os.unlink(img)
print(json.dumps({{'seconds': secs, 'status': done['status'], 'manifest_bytes': manifest,
    'peak_rss_mb': peak_kib / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-peers", action="store_true", help="no restic/borg")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--level", type=int, default=3, help="engine zstd level (default 3)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="full backups and restores: runs per tool (median)"
    )
    ap.add_argument(
        "--repos",
        choices=("scratch", "workdir"),
        default="scratch",
        help="where repositories live: a fresh loop-mounted ext4 (default) or the workdir",
    )
    args = ap.parse_args(argv)
    EngineChain.level = args.level
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-tp-", dir="/var/tmp")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    image = os.path.join(work, "volume.img")
    try:
        with contextlib.ExitStack() as stack:
            repos = work
            if args.repos == "scratch" and os.geteuid() != 0:
                print("not root: no scratch filesystem, repositories go in the workdir")
            elif args.repos == "scratch":
                repos = stack.enter_context(scratch_filesystem(work, max(8 * size, 4 << 30)))
            return run(args, size, work, image, repos)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, size: int, work: str, image: str, repos: str) -> int:
    """The whole sequence; repositories under ``repos``, images and restores under ``work``."""
    print(f"building a {size / MiB:.0f} MiB ext4 image of real files ...", flush=True)
    build_image(image, size, work)
    warm(image)
    peers = (
        []
        if args.skip_peers or not ensure_peers()
        else [Restic(os.path.join(repos, "restic")), Borg(os.path.join(repos, "borg"))]
    )
    print("baselines", flush=True)
    t_cat = row("cat", "read image", timed(lambda: cat_to_null(image))[0], size)["seconds"]
    t_zstd = row("zstd -T2 -3", "compress", timed(lambda: zstd_compress(image))[0], size)
    zst = image + ".zst"
    zstd_compress(image, zst)
    t_unzstd = row(
        "zstd -d",
        "decompress",
        timed(lambda: zstd_decompress(zst))[0],
        size,
        stored_mb=round(os.path.getsize(zst) / 1e6, 1),
    )
    unzst = os.path.join(work, "unzstd.img")
    os.sync()
    t_unzstd_file = timed(lambda: zstd_decompress(zst, unzst))[0]
    row("zstd -d", "to a file + fsync", t_unzstd_file, size)
    os.unlink(unzst)
    os.unlink(zst)
    a = EngineChain(os.path.join(repos, "cb-a"), image)
    b = EngineChain(os.path.join(repos, "cb-b"), image)

    def full_step() -> None:
        """Full backups, ``--repeat`` times per tool into fresh repositories; medians.

        The first run of each tool starts its chain; the others go to throwaway repositories
        that stay until the end (deleting thousands of files just before a timed step makes
        ext4's inode allocator slow, which would penalise whoever runs next).
        """
        runs: dict[str, list[float]] = {"cinderblock": [], **{p.name: [] for p in peers}}
        first = None
        for rep in range(args.repeat):
            warm(image)
            if rep == 0:
                secs, first = a.backup(False)
                b.backup(False)
            else:
                c = EngineChain(os.path.join(repos, f"cb-full-{rep}"), image)
                secs = c.backup(False)[0]
                c.close()
            runs["cinderblock"].append(secs)
            for p in peers:
                warm(image)
                q = p if rep == 0 else type(p)(os.path.join(repos, f"{p.name}-full-{rep}"))
                runs[p.name].append(q.backup(image))
        st = first["stats"]
        for tool, times in runs.items():
            more = {}
            if tool == "cinderblock":
                more = dict(
                    stored_mb=round(st["bytes_stored"] / 1e6, 1),
                    read_mb=round(st["bytes_read"] / 1e6),
                )
            row(tool, "full", statistics.median(times), size, runs=_fmt(times), **more)
        if repos != work:  # the same full backup, repository on the work directory's fs
            c = EngineChain(os.path.join(work, "cb-workfs"), image)
            warm(image)
            row("cinderblock (work fs)", "full", c.backup(False)[0], size)
            c.close()

    def step(name: str, extents: list) -> None:
        for tool, chain, hint in (("cinderblock", a, None), ("cinderblock+hint", b, extents)):
            warm(image)  # each chain starts with nothing dirty: syncfs flushes the whole fs
            secs, done = chain.backup(True, hint)
            st = done["stats"]
            row(
                tool,
                name,
                secs,
                size,
                stored_mb=round(st["bytes_stored"] / 1e6, 1),
                read_mb=round(st["bytes_read"] / 1e6),
            )
        for p in peers:
            warm(image)
            row(p.name, name, p.backup(image), size)

    print("S0 full", flush=True)
    full_step()
    before = native.scan_file(image, 4096, 0)
    contiguous_change(image, 0.01)
    print("S1 contiguous 1%", flush=True)
    step("incr contiguous 1%", tracker_extents(before, image))
    before = native.scan_file(image, 4096, 0)
    file_level_change(image, work, max(4 * MiB, size // 100))
    print("S2 file-level changes", flush=True)
    step("incr files", tracker_extents(before, image))
    pre_scatter = os.path.join(work, "pre-scatter.img")
    subprocess.run(["cp", "--sparse=always", image, pre_scatter], check=True)
    before = native.scan_file(image, 4096, 0)
    scattered_change(image, 0.01)
    print("S3 scattered 4 KiB, 1%", flush=True)
    step("incr scattered 1%", tracker_extents(before, image))

    print("restore of S3", flush=True)
    target = os.path.join(work, "restored.img")
    times, same = [], True
    for _ in range(args.repeat):
        os.sync()
        times.append(a.restore(target))
        same = same and subprocess.run(["cmp", "-s", image, target]).returncode == 0
        os.unlink(target)
    row("cinderblock", "restore", statistics.median(times), size, identical=same, runs=_fmt(times))
    for p in peers:
        tdir = os.path.join(work, f"restore-{p.name}")
        times = []
        for _ in range(args.repeat):
            os.sync()
            times.append(p.restore(tdir))
            shutil.rmtree(tdir, ignore_errors=True)
        row(p.name, "restore", statistics.median(times), size, runs=_fmt(times))
    stored = {"cinderblock": a.stored()} | {p.name: p.stored() for p in peers}
    a.close()
    b.close()

    print("scattered 4 KiB writes over 1% at several block sizes", flush=True)
    for bs in (64 * 1024, 256 * 1024, 1 << 20):
        img = os.path.join(work, "study.img")
        subprocess.run(["cp", "--sparse=always", pre_scatter, img], check=True)
        c = EngineChain(os.path.join(repos, f"cb-{bs}"), img, block_size=bs)
        warm(img)
        secs, done = c.backup(False)
        row(
            f"cinderblock {bs >> 10}K",
            "full",
            secs,
            size,
            stored_mb=round(done["stats"]["bytes_stored"] / 1e6, 1),
        )
        scattered_change(img, 0.01)
        warm(img)
        secs, done = c.backup(True)
        row(
            f"cinderblock {bs >> 10}K",
            "incr scattered 1%",
            secs,
            size,
            stored_mb=round(done["stats"]["bytes_stored"] / 1e6, 1),
        )
        c.close()
        os.unlink(img)

    print("empty 1 TiB sparse image", flush=True)
    tb = sparse_terabyte(work, repos)
    row(
        "cinderblock",
        "full 1 TiB sparse",
        tb["seconds"],
        1 << 40,
        peak_rss_mb=round(tb["peak_rss_mb"]),
        manifest_bytes=tb["manifest_bytes"],
    )

    summary(t_cat, t_zstd["seconds"], t_unzstd["seconds"], t_unzstd_file, stored)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": ROWS, "stored_bytes": stored}, f, indent=1)
    return 0


def summary(
    t_cat: float, t_zstd: float, t_unzstd: float, t_unzstd_file: float, stored: dict
) -> None:
    def get(tool: str, step: str) -> float | None:
        for r in ROWS:
            if r["tool"] == tool and r["step"] == step:
                return r["seconds"]
        return None

    print("\nsummary (ratios from this run; target in brackets)")
    full, restore = get("cinderblock", "full"), get("cinderblock", "restore")
    print(f"  full backup vs zstd -T2 -3 throughput   {t_zstd / full:5.2f}x   [>= 0.8]")
    print(f"  restore vs zstd -d throughput           {t_unzstd / restore:5.2f}x   [>= 0.8]")
    print(f"  restore vs zstd -d to a file + fsync    {t_unzstd_file / restore:5.2f}x")
    for step in ("incr contiguous 1%", "incr files"):
        nohint, hint = get("cinderblock", step), get("cinderblock+hint", step)
        print(f"  {step:<22} no hint / cat        {nohint / t_cat:5.2f}x   [<= 1.5]")
        print(f"  {step:<22} hint / no hint       {hint / nohint:5.2f}x   [<= 0.10]")
    for peer in ("restic", "borg"):
        if get(peer, "full") is None:
            continue
        for step, goal in (
            ("full", 3),
            ("incr contiguous 1%", 5),
            ("incr files", 5),
            ("incr scattered 1%", None),
            ("restore", 3),
        ):
            ours = get("cinderblock", step)
            theirs = get(peer, step)
            print(
                f"  vs {peer:<7} {step:<22} {theirs / ours:6.2f}x faster"
                + (f"   [>= {goal}]" if goal else "")
            )
        print(
            f"  vs {peer:<7} stored bytes             {stored['cinderblock'] / 1e6:8.1f} MB "
            f"vs {stored[peer] / 1e6:8.1f} MB"
        )


if __name__ == "__main__":
    sys.exit(main())
