#!/usr/bin/env python3
"""End-to-end: batch mode on a real (single-node, loopback-only) Slurm cluster.

Starts munged and Debian's slurmctld + slurmd as root, with every socket, port, pid, log and
state file of their own under the work folder (nothing in /etc, /run or /var is used), then
submits scripts/slurm-array.sh as a 3-task job array over a small zoo (~30 of ONNX's backend
test models plus the generated demo zoo). Each task converts its shard (taken from
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) and writes OUT/report-K.jsonl. Checks: every task
exits 0; the three reports are disjoint, each closes with the summary of shard "K/3", and
together they hold every model of the zoo exactly once, all "ok"; `report merge` (run as the
script's documented dependent job, and again directly) keeps every model once, all ok, with
totals that match; the output tree holds one output per model (plus <out>.data for the
externally stored model) and the zoo is unchanged. The daemons are always stopped.

Skips (77) when not root, when slurmctld/slurmd/sbatch/munged are missing (scripts/deps.sh
installs slurm-wlm and munge), or when the cluster does not come up within 60 s (the daemons'
log tails are printed)."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_slurm"
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(C.HERE)), "scripts", "slurm-array.sh")
TESTDATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")
SHARDS = 3
TESTDATA_MODELS = 30
UP_TIMEOUT = 60
JOB_TIMEOUT = 120


def find_bin(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=25):
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        return "(%s: %s)" % (path, e.strerror)
    return "\n".join(["--- %s (last %d lines)" % (path, min(n, len(lines)))] + lines[-n:])


def mem_mib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


class Cluster:
    """munged + slurmctld + slurmd, all children of this process, each in its own session."""

    def __init__(self, work):
        self.dir = os.path.join(work, "slurm")
        self.procs = []  # (name, Popen, log file object)
        self.logs = []
        self.env = None
        self.tmp_sock_dir = None

    def _spawn(self, name, argv, env):
        log = open(os.path.join(self.dir, name + ".out"), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.procs.append((name, p, log))
        self.logs.append(log.name)
        return p

    def dead(self):
        return [(n, p.returncode) for n, p, _ in self.procs if p.poll() is not None]

    def log_tails(self):
        # With -D, slurmctld and slurmd log to stderr (X.out) and to X.log alike: show the .log
        # only when the .out is empty (the daemon died before logging anything).
        shown = []
        for p in self.logs:
            out = p[:-4] + ".out"
            if p.endswith(".log") and out in self.logs and os.path.getsize(out) > 0:
                continue
            shown.append(p)
        return "\n".join(tail(p) for p in shown)

    def start(self, bins):
        """Returns None when the node is idle, else the reason it is not."""
        d = self.dir
        mdir = os.path.join(d, "munge")
        for sub in ("munge", "state", "spool"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        # munged wants its socket folder searchable by all, its key private.
        os.chmod(d, 0o755)
        os.chmod(mdir, 0o755)
        sock = os.path.join(mdir, "munge.socket")
        if len(sock) > 100:  # AF_UNIX paths are limited to 108 bytes
            import tempfile
            self.tmp_sock_dir = tempfile.mkdtemp(prefix="msh-munge-")
            os.chmod(self.tmp_sock_dir, 0o755)
            sock = os.path.join(self.tmp_sock_dir, "munge.socket")
        key = os.path.join(mdir, "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_",
                                         "SINFO_", "SCONTROL_", "SACCT_"))
                    and k not in ("JOB_COMPLETION_INDEX",)}
        munged = self._spawn("munged", [
            bins["munged"], "--foreground", "--force", "--key-file=" + key, "--socket=" + sock,
            "--pid-file=" + os.path.join(mdir, "munged.pid"),
            "--log-file=" + os.path.join(mdir, "munged.log"),
            "--seed-file=" + os.path.join(mdir, "munged.seed")], self.env)
        self.logs.append(os.path.join(mdir, "munged.log"))
        deadline = time.time() + 10
        while not os.path.exists(sock):
            if munged.poll() is not None or time.time() > deadline:
                return "munged did not create its socket %s" % sock
            time.sleep(0.1)

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        conf = os.path.join(d, "slurm.conf")
        settings = [
            ("ClusterName", "mshtest"),
            ("SlurmctldHost", "localhost(127.0.0.1)"),
            ("SlurmctldPort", free_port()),
            ("SlurmdPort", free_port()),
            # bind to the configured (loopback) addresses, not to INADDR_ANY
            ("CommunicationParameters", "NoInAddrAny,NoCtldInAddrAny"),
            ("SlurmUser", "root"),
            ("SlurmdUser", "root"),
            ("AuthType", "auth/munge"),
            ("CredType", "cred/munge"),
            ("AuthInfo", "socket=" + sock),
            ("StateSaveLocation", os.path.join(d, "state")),
            ("SlurmdSpoolDir", os.path.join(d, "spool")),
            ("SlurmctldPidFile", os.path.join(d, "slurmctld.pid")),
            ("SlurmdPidFile", os.path.join(d, "slurmd.pid")),
            ("SlurmctldLogFile", os.path.join(d, "slurmctld.log")),
            ("SlurmdLogFile", os.path.join(d, "slurmd.log")),
            ("SlurmctldDebug", "info"),
            ("SlurmdDebug", "info"),
            ("ProctrackType", "proctrack/linuxproc"),
            ("TaskPlugin", "task/none"),
            ("JobAcctGatherType", "jobacct_gather/none"),
            ("AccountingStorageType", "accounting_storage/none"),
            ("JobCompType", "jobcomp/none"),
            ("SelectType", "select/cons_tres"),
            ("SelectTypeParameters", "CR_CPU"),
            ("SchedulerType", "sched/backfill"),
            ("MpiDefault", "none"),
            ("ReturnToService", "2"),
            ("NodeName", "localhost NodeAddr=127.0.0.1 CPUs=%d RealMemory=%d State=UNKNOWN"
             % (cpus, max(1, mem_mib() // 2))),
            ("PartitionName", "debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"),
        ]
        with open(conf, "w") as f:
            f.write("# written by tests/e2e/test_slurm.py\n")
            for k, v in settings:
                f.write("%s=%s\n" % (k, v))
        self.env["SLURM_CONF"] = conf
        self.logs += [os.path.join(d, "slurmctld.log"), os.path.join(d, "slurmd.log")]
        self._spawn("slurmctld", [bins["slurmctld"], "-D", "-c", "-f", conf], self.env)
        self._spawn("slurmd", [bins["slurmd"], "-D", "-N", "localhost", "-f", conf], self.env)

        deadline = time.time() + UP_TIMEOUT
        state = ""
        while time.time() < deadline:
            if self.dead():
                return "%s exited early" % ", ".join("%s (exit %s)" % x for x in self.dead())
            p = subprocess.run([bins["sinfo"], "-h", "-N", "-o", "%T"], env=self.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
            state = p.stdout.decode("utf-8", "replace").strip()
            if p.returncode == 0 and state == "idle":
                return None
            time.sleep(0.5)
        return "node not idle after %d s (sinfo: %r)" % (UP_TIMEOUT, state)

    def stop(self):
        for name, p, _ in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p, log in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
            log.close()
        self.procs = []
        if self.tmp_sock_dir:
            shutil.rmtree(self.tmp_sock_dir, ignore_errors=True)


def stop_leftovers(argv):
    """Stop the daemons of an earlier run of this test on the same work folder that was killed
    before it could stop them (their pid files are in WORK/slurm; a pid counts only if its
    command line names that folder). Runs before parse_args() empties the folder."""
    if "--work" not in argv[:-1]:
        return
    work = os.path.abspath(argv[argv.index("--work") + 1])
    d = os.path.join(work, "slurm")
    # an `sbatch --wait` of that run would wait for its dead controller forever
    for pdir in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(pdir + "/cmdline", "rb").read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if os.path.basename(cmd[0]) == "sbatch" and "--chdir=" + work in cmd:
            print("stopping sbatch %s left by an earlier run" % pdir[6:])
            try:
                os.kill(int(pdir[6:]), signal.SIGKILL)
            except OSError:
                pass
    for pf in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
        try:
            pid = int(open(os.path.join(d, pf)).read().split()[0])
            cmd = open("/proc/%d/cmdline" % pid, "rb").read().decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):
            continue
        if d + os.sep in cmd.replace("\0", " "):
            print("stopping %s %d left by an earlier run" % (pf, pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def make_zoo(zoo):
    """~30 test-data models under testdata/<category>/<test>/model.onnx plus the generated demo
    zoo under gen/. Returns (sorted list of model paths relative to zoo, set of those stored
    with external data)."""
    all_models = sorted(glob.glob(os.path.join(TESTDATA, "*", "*", "model.onnx")))
    if not all_models:
        C.skip("no ONNX test data in %s (install libonnx-testdata)" % TESTDATA)
    step = max(1, len(all_models) // TESTDATA_MODELS)
    rels = []
    for src in all_models[::step][:TESTDATA_MODELS]:
        rel = os.path.join("testdata", os.path.relpath(src, TESTDATA))
        os.makedirs(os.path.dirname(os.path.join(zoo, rel)), exist_ok=True)
        shutil.copyfile(src, os.path.join(zoo, rel))
        rels.append(rel)
    G = C.gen_models()
    gen = os.path.join(zoo, "gen")
    external = set()
    for p in G.make_zoo(gen, count=5):
        rel = os.path.relpath(p, zoo)
        rels.append(rel)
        if os.path.relpath(p, gen).startswith("external/"):
            external.add(rel)
    return sorted(rels), external


def read_report(path):
    """(model records, summary records, unparsable line count)."""
    models, summaries, bad = [], [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            (summaries if rec.get("type") == "summary" else models).append(rec)
    return models, summaries, bad


def main():
    C.import_deps("numpy", "onnx")  # for the generated part of the zoo
    stop_leftovers(sys.argv)
    args = C.parse_args(__doc__)
    # ctest's timeout sends SIGTERM: turn it into SystemExit so the daemons are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if os.geteuid() != 0:
        C.skip("needs root (slurmd runs the job as its user, munged and slurmd as root)")
    bins = {n: find_bin(n) for n in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo",
                                     "scontrol", "scancel")}
    missing = [n for n, p in bins.items() if not p]
    if missing:
        C.skip("Slurm/munge binaries not found: %s (apt-get install slurm-wlm munge; "
               "scripts/deps.sh does)" % ", ".join(missing))
    if not os.access(SCRIPT, os.X_OK):
        print("FAIL: %s is missing or not executable" % SCRIPT)
        return 1
    F = C.Failures()

    zoo = os.path.join(args.work, "zoo")
    out = os.path.join(args.work, "out")
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs)
    models, external = make_zoo(zoo)
    before = C.tree_state(zoo)

    cluster = Cluster(args.work)
    try:
        t0 = time.time()
        why = cluster.start(bins)
        if why:
            print(cluster.log_tails())
            C.skip("the local Slurm cluster did not come up: " + why)
        print("slurm: node idle after %.1f s" % (time.time() - t0), flush=True)
        env = dict(cluster.env)

        # ---- the array: one shard per task, each with its own report -------------------------
        sb = [bins["sbatch"], "--parsable", "--wait", "--array=0-%d" % (SHARDS - 1),
              "--cpus-per-task=1", "--time=10", "--chdir=" + args.work,
              "--output=" + os.path.join(logs, "task-%A_%a.out"),
              "--export=ALL,MSH=%s,IN=%s,OUT=%s" % (args.bin, zoo, out), SCRIPT]
        t1 = time.time()
        try:
            p = subprocess.run(sb, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            subprocess.run([bins["scancel"], "--name=modelshrink"], env=env, timeout=20)
            F.fail("sbatch --wait of the %d-task array finished within %d s"
                   % (SHARDS, JOB_TIMEOUT), "\n".join(tail(x) for x in
                                                      sorted(glob.glob(logs + "/*.out"))))
            return F.finish(NAME)
        jobid = p.stdout.decode().strip().split(";")[0]
        task_logs = "\n".join(tail(x, 15) for x in sorted(glob.glob(logs + "/task-*.out")))
        print("slurm: array job %s done in %.1f s, exit %d" % (jobid, time.time() - t1,
                                                                p.returncode), flush=True)
        if args.verbose:
            print(task_logs)
        F.check(p.returncode == 0 and jobid.isdigit(),
                "sbatch --wait --array=0-%d scripts/slurm-array.sh exits 0 (every task exit 0)"
                % (SHARDS - 1), "exit %d, stdout %r, stderr %r\n%s"
                % (p.returncode, p.stdout.decode(), p.stderr.decode(), task_logs))
        F.check(len(glob.glob(logs + "/task-*.out")) == SHARDS,
                "one log per task (%d)" % SHARDS, task_logs)

        # ---- per-task reports: disjoint shards that cover the zoo ---------------------------
        seen = {}
        for k in range(SHARDS):
            rp = os.path.join(out, "report-%d.jsonl" % k)
            if not F.check(os.path.isfile(rp), "task %d wrote %s" % (k, rp), task_logs):
                continue
            recs, sums, bad = read_report(rp)
            F.check(bad == 0, "report-%d.jsonl: every line is JSON" % k)
            F.check(len(sums) == 1 and sums[0].get("shard") == "%d/%d" % (k, SHARDS)
                    and sums[0].get("models") == len(recs) and sums[0].get("ok") == len(recs)
                    and sums[0].get("failed") == 0 and sums[0].get("interrupted") is False,
                    "report-%d.jsonl ends with one summary: shard \"%d/%d\", models = ok = its "
                    "%d records, failed 0, not interrupted" % (k, k, SHARDS, len(recs)),
                    json.dumps(sums))
            for r in recs:
                seen.setdefault(r.get("rel"), []).append(k)
                F.check(r.get("status") == "ok" and r.get("error") is None,
                        "report-%d: %s converted ok" % (k, r.get("rel")), json.dumps(r))
        dups = {rel: ks for rel, ks in seen.items() if len(ks) > 1}
        F.check(not dups, "no model converted by two tasks", json.dumps(dups))
        F.check(sorted(seen) == models,
                "the tasks' reports together name every model of the zoo (%d)" % len(models),
                "missing %s\nunexpected %s" % (sorted(set(models) - set(seen)),
                                               sorted(set(seen) - set(models))))
        used = sorted(set(k for ks in seen.values() for k in ks))
        F.check(used == list(range(SHARDS)),
                "every shard got models (%d models over %d shards)" % (len(models), SHARDS),
                "shards with models: %s" % used)

        # ---- merge as the script documents it: a job that depends on the array -------------
        merged = os.path.join(out, "report.jsonl")
        wrap = "%s report merge %s/report-*.jsonl -o %s" % (args.bin, out, merged)
        try:
            p = subprocess.run([bins["sbatch"], "--parsable", "--wait",
                                "--dependency=afterok:%s" % jobid, "--job-name=modelshrink-merge",
                                "--time=5", "--chdir=" + args.work,
                                "--output=" + os.path.join(logs, "merge-%j.out"), "--wrap", wrap],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=60)
            mlog = "\n".join(tail(x) for x in glob.glob(logs + "/merge-*.out"))
            F.check(p.returncode == 0, "dependent merge job (--dependency=afterok:%s) exits 0"
                    % jobid, "exit %d, stderr %r\n%s" % (p.returncode, p.stderr.decode(), mlog))
        except subprocess.TimeoutExpired:
            subprocess.run([bins["scancel"], "--name=modelshrink-merge"], env=env, timeout=20)
            F.fail("dependent merge job finished within 60 s")

        # ---- merge directly ---------------------------------------------------------------
        local = os.path.join(args.work, "merged.jsonl")
        reports = sorted(glob.glob(os.path.join(out, "report-*.jsonl")))
        r = C.run(args.bin, "report", "merge", *reports, "-o", local, timeout=60)
        F.check(r.rc == 0, "report merge of the %d reports exits 0" % len(reports), r.describe())
        for label, path in (("merged (dependent job)", merged), ("merged (direct)", local)):
            if not F.check(os.path.isfile(path), "%s: %s exists" % (label, path)):
                continue
            recs, sums, bad = read_report(path)
            rels = [x.get("rel") for x in recs]
            F.check(sorted(rels) == models and len(set(rels)) == len(rels),
                    "%s: every model of the zoo exactly once (%d)" % (label, len(models)),
                    "%d records; missing %s; duplicated %s" % (
                        len(rels), sorted(set(models) - set(rels)),
                        sorted(x for x in set(rels) if rels.count(x) > 1)))
            F.check(all(x.get("status") == "ok" for x in recs), "%s: all status ok" % label,
                    "\n".join(json.dumps(x) for x in recs if x.get("status") != "ok"))
            s = sums[0] if len(sums) == 1 else {}
            F.check(len(sums) == 1 and s.get("models") == len(models)
                    and s.get("ok") == len(models) and s.get("failed") == 0
                    and s.get("bytes_in") == sum(x.get("bytes_in", 0) for x in recs)
                    and s.get("bytes_out") == sum(x.get("bytes_out", 0) for x in recs),
                    "%s: one summary, models = ok = %d, failed 0, byte totals = sums of the "
                    "records" % (label, len(models)), json.dumps(sums))
            F.check(isinstance(s.get("shards"), list) and len(s.get("shards")) == SHARDS
                    and ("%d/%d" % (0, SHARDS) in s["shards"] or 0 in s["shards"]),
                    "%s: summary lists the %d shards" % (label, SHARDS),
                    json.dumps(s.get("shards")))
            for x in recs:
                want = os.path.join(out, x.get("rel") or "?")
                if not F.check(x.get("output") and os.path.realpath(x["output"]) ==
                               os.path.realpath(want), "%s: %s output is OUT/<rel>"
                               % (label, x.get("rel")), json.dumps(x)):
                    break

        # ---- the output tree: one output per model ------------------------------------------
        written = sorted(os.path.relpath(os.path.join(dp, f), out)
                         for dp, _, fs in os.walk(out) for f in fs)
        written = [w for w in written if not (w.startswith("report") and w.endswith(".jsonl"))]
        expect = sorted(models + [m + ".data" for m in external])
        F.check(written == expect,
                "OUT holds one output per model (plus <out>.data for the external one), "
                "nothing else besides the reports",
                "missing %s\nunexpected %s" % (sorted(set(expect) - set(written)),
                                               sorted(set(written) - set(expect))))
        F.check(C.tree_state(zoo) == before, "zoo folder unchanged")
        print("slurm: total %.1f s" % (time.time() - t0), flush=True)
        if F.items:
            print(cluster.log_tails())
    finally:
        cluster.stop()
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
