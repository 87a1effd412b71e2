"""Stand-ins for SLURM's commands, so that the launcher's job scripts run for real on one machine: ``sbatch``
runs a submitted job at once (respecting ``--dependency=afterok``), ``squeue`` reports the jobs' states,
``srun`` starts one task per "node" here, ``scontrol`` lists the node names, ``scancel`` signals the tasks.
They keep their state in $STANDIN. (srun, scontrol and scancel are those of test_run.py.)"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

SBATCH = '''
"""sbatch on one machine: the job runs at once, to its end, before sbatch returns, with the variables SLURM
sets (nodes node-a, node-b ... as many as its #SBATCH --nodes) and its console where its #SBATCH --output
says. With --dependency=afterok:ID it runs only when job ID has completed; otherwise, as SLURM does, it is
cancelled (--kill-on-invalid-dep=yes) or pends for ever. Each call is a JSON line in $STANDIN/sbatch, each
job's state is in $STANDIN/jobs/<id> (squeue reads it)."""
import json, os, re, shlex, string, subprocess, sys

jobs = os.path.join(os.environ["STANDIN"], "jobs")
os.makedirs(jobs, exist_ok=True)
args, opts = sys.argv[1:], {}
while args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
script, = args
with open(os.path.join(os.environ["STANDIN"], "sbatch"), "a+") as f:
    f.seek(0)
    job = str(100 + len(f.readlines()))
    f.write(json.dumps({"job": job, "argv": sys.argv[1:]}) + "\\n")


def set_state(state):
    with open(os.path.join(jobs, job), "w") as f:
        f.write(state)


directives = {}
for line in open(script):
    if line.startswith("#SBATCH "):
        for word in shlex.split(line[len("#SBATCH "):]):
            key, _, value = word[2:].partition("=")
            directives[key] = value
print(job if "parsable" in opts else f"Submitted batch job {job}", flush=True)
kind, _, after = opts.get("dependency", "afterok:").partition(":")
assert kind == "afterok", opts
if any(open(os.path.join(jobs, d)).read() != "COMPLETED" for d in after.split(":") if d):
    set_state("CANCELLED" if opts.get("kill-on-invalid-dep") == "yes" else "PENDING")
    sys.exit(0)
nodes = ",".join(f"node-{string.ascii_lowercase[i]}" for i in range(int(directives.get("nodes", "1"))))
output = re.sub("%(.)", lambda m: {"j": job, "%": "%"}[m[1]], directives.get("output", "slurm-%j.out"))
env = {**os.environ, "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": nodes, "SLURM_JOB_NUM_NODES": str(nodes.count(",") + 1),
       "SLURM_NNODES": str(nodes.count(",") + 1)}
set_state("RUNNING")
with open(output, "a") as out:
    code = subprocess.run(["bash", script], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
set_state("COMPLETED" if code == 0 else "FAILED")
'''

SQUEUE = '''
"""squeue -h -j ID -o %T: the job's state from $STANDIN/jobs; like squeue, an error for a job it does not know."""
import os, sys

args = sys.argv[1:]
assert args[:2] == ["-h", "-j"] and args[3:] == ["-o", "%T"], args
path = os.path.join(os.environ["STANDIN"], "jobs", args[2])
if not os.path.exists(path):
    sys.exit("slurm_load_jobs error: Invalid job id specified")
print(open(path).read())
'''

SRUN = '''
"""srun on one machine: every node of SLURM_JOB_NODELIST is a process here (their pids go to $STANDIN/tasks)."""
import os, re, signal, subprocess, sys, time

args, opts = sys.argv[1:], {}
while args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
nodes = os.environ["SLURM_JOB_NODELIST"].split(",")
chosen = [opts["nodelist"]] if "nodelist" in opts else nodes[:int(opts["nodes"])]
if "nodelist" not in opts and os.environ.get("STANDIN_TASK"):
    args = [sys.executable, "-c", os.environ["STANDIN_TASK"]]
tasks = []
for name in chosen:
    env = {**os.environ, "SLURMD_NODENAME": name, "SLURM_NODEID": str(nodes.index(name)),
           "SLURM_PROCID": str(len(tasks))}
    out = None
    if "output" in opts:
        path = re.sub("%(.)", lambda m: {"j": env["SLURM_JOB_ID"], "N": name, "%": "%"}[m[1]], opts["output"])
        out = open(path, "a")
    tasks.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
with open(os.path.join(os.environ["STANDIN"], "tasks"), "a") as f:
    f.write("".join(f"{t.pid}\\n" for t in tasks))
# As srun does: SIGTERM ends the tasks at once; other signals are passed on.
signal.signal(signal.SIGTERM, lambda *_: [t.kill() for t in tasks])
for sig in (signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, lambda signum, _: [t.send_signal(signum) for t in tasks])
while any(t.poll() is None for t in tasks):
    if "kill-on-bad-exit" in opts and any(t.poll() for t in tasks):
        [t.kill() for t in tasks]
    time.sleep(0.1)
sys.exit(next((t.returncode for t in tasks if t.returncode), 0))
'''

SCONTROL = '''
import os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["STANDIN"], "calls"), "a") as f:
    f.write("scontrol " + " ".join(args) + "\\n")
if args[:2] == ["show", "hostnames"]:
    print("\\n".join(args[2].split(",")))
'''

SCANCEL = '''
"""scancel --signal=SIG JOBID: the signal goes to every task srun started (the job steps), not to the script."""
import os, signal, sys
args = sys.argv[1:]
state = os.environ["STANDIN"]
with open(os.path.join(state, "calls"), "a") as f:
    f.write("scancel " + " ".join(args) + "\\n")
sig = getattr(signal, "SIG" + args[0].partition("=")[2])
for pid in open(os.path.join(state, "tasks")).read().split():
    try:
        os.kill(int(pid), sig)
    except ProcessLookupError:
        pass
'''

STAND_INS = {"sbatch": SBATCH, "squeue": SQUEUE, "srun": SRUN, "scontrol": SCONTROL, "scancel": SCANCEL}


def install(directory: Path) -> dict[str, str]:
    """Writes the stand-ins into ``directory/bin``; returns the variables that put them first on PATH and give
    them ``directory/standin`` for their state (STANDIN)."""
    bin_dir, state = directory / "bin", directory / "standin"
    bin_dir.mkdir()
    state.mkdir()
    for name, source in STAND_INS.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN": str(state)}
