/* Process lifecycle capture: fork, exec, exit, OOM kill, and per-process
 * on-CPU time. Tracepoints only (this kernel has no kprobes).
 *
 * Kernel structs are never read through the kernel headers bcc compiles
 * against (Debian ships 6.1 headers; the running kernel lays task_struct out
 * differently). Every struct read goes through a byte offset taken from
 * /sys/kernel/btf/vmlinux at start-up and passed as a -D flag (OFF_*).
 *
 * Compile-time parameters (all -D flags, printed by `otel-linnix bpf dump`):
 *   RINGBUF_PAGES      ring buffer size in pages (power of two)
 *   WAKEUP_EVERY       wake the consumer on every Nth record per CPU; the
 *                      consumer otherwise drains on its own timer, which is
 *                      what keeps the per-event cost low
 *   ARGV_MAX           bytes of argv copied at exec (power of two)
 *   FNAME_MAX          bytes of the exec filename (power of two)
 *   CAPTURE_KTHREADS   1 to report kernel threads, 0 to drop them here
 *   CPU_MAP_ENTRIES    processes with CPU accounting
 *   THREAD_MAP_ENTRIES threads with CPU accounting
 *   EXIT_OVERFLOW_ENTRIES exits kept when the ring buffer is full
 *   TRACEPARENT_SCAN   1 to look for TRACEPARENT= in the environment at exec
 *   ENV_SCAN_MAX       bytes of the environment scanned for it; a longer
 *                      environment is flagged F_ENV_TRUNC (when not found)
 *
 * Overhead notes: fork/exec/exit fire at process-creation rate (at most about
 * 40k/s on this 2-core machine). sched_switch fires on every context switch
 * (1k-100k/s): its handler does two hash lookups and no ring-buffer write.
 */
#include "events.h"

#define PF_EXITING  0x00000004
#define PF_KTHREAD  0x00200000
#define CLONE_THREAD 0x00010000

#define READ_FIELD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, __u64, ST_COUNT);
BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);
/* tgid -> on-CPU ns of all its threads (since the thread was first seen,
 * which includes the thread's history before the agent started). */
BPF_HASH(cpu_ns, __u32, __u64, CPU_MAP_ENTRIES);
/* tid -> the thread's sum_exec_runtime when it was last switched out. */
BPF_HASH(thread_rt, __u32, __u64, THREAD_MAP_ENTRIES);
BPF_PERCPU_ARRAY(oncpu_now, struct oncpu, 1);
/* Exits that found the ring buffer full wait here; user space drains it
 * every cycle. A lost exit would leave a live process in the tree forever. */
BPF_HASH(exit_overflow, struct exit_key, struct exit_event, EXIT_OVERFLOW_ENTRIES);

static __always_inline void count(__u32 idx)
{
    __u64 *v = stats.lookup(&idx);
    if (v)
        *v += 1;
}

/* Per-CPU submit counter: every WAKEUP_EVERY-th record wakes the consumer so
 * a burst cannot fill the ring before the next timed drain. */
static __always_inline __u64 wakeup_flag(void)
{
    __u32 idx = ST_SUBMITTED;
    __u64 *v = stats.lookup(&idx);
    if (!v)
        return BPF_RB_NO_WAKEUP;
    *v += 1;
    if (*v % WAKEUP_EVERY == 0) {
        count(ST_WAKEUPS);
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void *task_ptr(void *task, __u32 off)
{
    void *p = 0;
    READ_FIELD(p, task, off);
    return p;
}

static __always_inline __u64 leader_start(void *task)
{
    __u64 v = 0;
    void *leader = task_ptr(task, OFF_TASK_GROUP_LEADER);
    if (leader)
        READ_FIELD(v, leader, OFF_TASK_START_BOOTTIME);
    return v;
}

/* Identity fields shared by every record, read from `task`. */
static __always_inline void fill_header(struct event_header *h, __u32 kind, void *task)
{
    __u32 tgid = 0, ppid = 0, flags = 0;
    void *parent = task_ptr(task, OFF_TASK_REAL_PARENT);

    READ_FIELD(tgid, task, OFF_TASK_TGID);
    READ_FIELD(flags, task, OFF_TASK_FLAGS);
    h->kind = kind;
    h->pid = tgid;
    h->flags = (flags & PF_KTHREAD) ? F_KTHREAD : 0;
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->start_ns = leader_start(task);
    h->parent_start_ns = 0;
    h->ppid = 0;
    if (parent) {
        READ_FIELD(ppid, parent, OFF_TASK_TGID);
        h->ppid = ppid;
        h->parent_start_ns = leader_start(parent);
    }
    bpf_probe_read_kernel(&h->comm, sizeof(h->comm), task + OFF_TASK_COMM);
}

#if TRACEPARENT_SCAN
/* Finding TRACEPARENT= in the new image's environment (mm->env_start ..
 * env_end, "NAME=value\0NAME=value\0..."). The environment holds secrets:
 * each entry is read into this program's stack only (gone when the program
 * returns), compared with the key, and only the TRACEPARENT value is copied
 * into the record. One bpf_probe_read_user_str per entry (per ENV_PIECE
 * bytes of a long one) finds where the next entry starts; at most
 * ENV_SCAN_STEPS reads and ENV_SCAN_MAX bytes, so the cost is bounded and
 * the loop stays small for the verifier (bcc cannot hand bpf_loop a
 * callback, and a byte- or word-wise scan of 8 KiB unrolls past its limits). */
#define ENV_PIECE 256
#define ENV_SCAN_STEPS 256
#define TP_KEY_LEN 12                         /* strlen("TRACEPARENT=") */
#define TP_KEY_HEAD 0x5241504543415254ULL     /* "TRACEPAR", little-endian */
#define TP_KEY_TAIL 0x3d544e45U               /* "ENT=" */

/* The TRACEPARENT value of the new image into e->traceparent (tp_len stays 0
 * if there is none in the part scanned). */
static __always_inline void read_traceparent(struct exec_event *e, void *mm)
{
    __u64 env_start = 0, env_end = 0;
    READ_FIELD(env_start, mm, OFF_MM_ENV_START);
    READ_FIELD(env_end, mm, OFF_MM_ENV_END);
    if (env_end <= env_start)
        return;
    __u64 end = env_end - env_start > ENV_SCAN_MAX ? env_start + ENV_SCAN_MAX : env_end;
    __u64 p = env_start, found = 0;
    int at_entry = 1; /* p is the first byte of an entry */
    union {
        char c[ENV_PIECE];
        struct { __u64 head; __u32 tail; } key;
    } buf;

    for (__u32 i = 0; i < ENV_SCAN_STEPS; i++) {
        if (p >= end)
            break;
        long n = bpf_probe_read_user_str(buf.c, sizeof(buf.c), (void *)p);
        if (n <= 0)
            break; /* unreadable: give up, as /proc would show nothing */
        if (at_entry && n > TP_KEY_LEN && buf.key.head == TP_KEY_HEAD &&
            buf.key.tail == TP_KEY_TAIL) {
            found = p + TP_KEY_LEN;
            break;
        }
        if (n == sizeof(buf.c)) {
            /* A piece of a long entry: go on from its last byte copied. */
            p += sizeof(buf.c) - 1;
            at_entry = 0;
        } else {
            p += n;
            at_entry = 1;
        }
    }
    if (found) {
        /* _str stops at the value's NUL: nothing after it is copied. */
        long n = bpf_probe_read_user_str(e->traceparent, TP_COPY + 1, (void *)found);
        e->tp_len = n > 0 ? n - 1 : 0;
    } else if (p < env_end) {
        e->h.flags |= F_ENV_TRUNC;
        count(ST_ENV_TRUNC);
    }
}
#endif

/* Resident pages of an mm: file + anon + shmem counters. On >= 6.2 these
 * are percpu_counters; reading .count gives the folded value, which lags
 * the exact sum by at most the per-CPU batch (a few hundred KiB). */
static __always_inline __u64 mm_rss_pages(void *mm)
{
    __s64 file = 0, anon = 0, shmem = 0;
    void *base = mm + OFF_MM_RSS_STAT + RSS_VALUE_OFF;
    bpf_probe_read_kernel(&file, sizeof(file), base + RSS_FILEPAGES * RSS_STRIDE);
    bpf_probe_read_kernel(&anon, sizeof(anon), base + RSS_ANONPAGES * RSS_STRIDE);
    bpf_probe_read_kernel(&shmem, sizeof(shmem), base + RSS_SHMEMPAGES * RSS_STRIDE);
    __s64 sum = file + anon + shmem;
    return sum > 0 ? (__u64)sum : 0;
}

RAW_TRACEPOINT_PROBE(task_newtask)
{
    /* TP_PROTO(struct task_struct *task, u64 clone_flags); runs in the
     * parent after the child is fully set up (real_parent, start_boottime). */
    void *child = (void *)ctx->args[0];
    __u64 clone_flags = ctx->args[1];
    if (clone_flags & CLONE_THREAD)
        return 0;

    struct fork_event *e = events.ringbuf_reserve(sizeof(struct fork_event));
    if (!e) {
        count(ST_LOST_FORK);
        return 0;
    }
    fill_header(&e->h, EV_FORK, child);
    if (!CAPTURE_KTHREADS && (e->h.flags & F_KTHREAD)) {
        events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        return 0;
    }
    __u64 uid_gid = bpf_get_current_uid_gid();
    e->h.uid = (__u32)uid_gid;
    e->h.gid = uid_gid >> 32;
    e->h.cgroup_id = bpf_get_current_cgroup_id();
    e->clone_flags = clone_flags;
    events.ringbuf_submit(e, wakeup_flag());
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    __u32 zero = 0;
    struct exec_event *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    void *task = (void *)bpf_get_current_task();
    fill_header(&e->h, EV_EXEC, task);
    __u64 uid_gid = bpf_get_current_uid_gid();
    e->h.uid = (__u32)uid_gid;
    e->h.gid = uid_gid >> 32;
    e->h.cgroup_id = bpf_get_current_cgroup_id();

    int n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
                                      (void *)args + (args->data_loc_filename & 0xFFFF));
    e->fname_len = n > 0 ? n - 1 : 0;
    if (n >= FNAME_MAX)
        e->h.flags |= F_FNAME_TRUNC;

    /* argv is read from the new image's mm, as /proc/<pid>/cmdline would
     * show it: at syscall entry the pages may not be mapped yet. */
    __u64 arg_start = 0, arg_end = 0, len = 0;
    void *mm = task_ptr(task, OFF_TASK_MM);
    if (mm) {
        READ_FIELD(arg_start, mm, OFF_MM_ARG_START);
        READ_FIELD(arg_end, mm, OFF_MM_ARG_END);
    }
    /* The scratch record is reused: no earlier exec's value may remain. */
    e->tp_len = 0;
    __builtin_memset(e->traceparent, 0, sizeof(e->traceparent));
#if TRACEPARENT_SCAN
    if (mm)
        read_traceparent(e, mm);
#endif
    if (arg_end > arg_start)
        len = arg_end - arg_start;
    if (len > ARGV_MAX) {
        len = ARGV_MAX;
        e->h.flags |= F_ARGV_TRUNC;
    }
    /* Keep the bound visible to the verifier after the clamp. */
    len &= (ARGV_MAX << 1) - 1;
    if (len > ARGV_MAX)
        len = ARGV_MAX;
    if (len && bpf_probe_read_user(e->argv, len, (void *)arg_start) != 0) {
        count(ST_ARGV_FAULT);
        e->h.flags |= F_ARGV_FAULT;
        len = 0;
    }
    e->argv_len = len;

    __u64 size = offsetof(struct exec_event, argv) + len;
    if (size > sizeof(struct exec_event))
        size = sizeof(struct exec_event);
    if (events.ringbuf_output(e, size, wakeup_flag()) != 0)
        count(ST_LOST_EXEC);
    return 0;
}

#define ACCT_SWITCH  0 /* a context switch of a live thread */
#define ACCT_EXITING 1 /* a context switch of a thread inside do_exit() */
#define ACCT_FINAL   2 /* the thread's sched_process_exit */

/* Fold a thread's runtime since it was last seen into its process total;
 * returns the thread's runtime.
 * A thread first seen contributes its whole sum_exec_runtime, so threads of
 * processes older than the agent are counted from their start. Once a thread
 * is exiting nothing is inserted: its final switch comes after the exit
 * handler removed its entries and must not re-create them. */
static __always_inline __u64 account_thread(void *task, __u32 tid, __u32 tgid, int mode)
{
    __u64 rt = 0, delta;
    READ_FIELD(rt, task, OFF_TASK_SUM_EXEC_RUNTIME);
    if (mode == ACCT_FINAL) {
        /* sum_exec_runtime lags the running slice until the scheduler next
         * updates it (a short process may show 0); extend it by the time
         * since this thread was switched in. */
        __u32 zero = 0;
        struct oncpu *cur = oncpu_now.lookup(&zero);
        if (cur && cur->tid == tid) {
            __u64 live = cur->rt_in + (bpf_ktime_get_boot_ns() - cur->since_ns);
            if (live > rt)
                rt = live;
        }
    }
    __u64 *last = thread_rt.lookup(&tid);
    if (last) {
        delta = rt - *last;
        *last = rt;
    } else if (mode == ACCT_EXITING) {
        return rt; /* finalised already, or will be by the exit handler */
    } else {
        delta = rt;
        if (mode == ACCT_SWITCH && thread_rt.update(&tid, &rt) != 0)
            count(ST_THREAD_MAP_FULL);
    }
    __u64 *total = cpu_ns.lookup(&tgid);
    if (total) {
        __sync_fetch_and_add(total, delta);
    } else if (mode == ACCT_SWITCH) {
        if (cpu_ns.update(&tgid, &delta) != 0)
            count(ST_CPU_MAP_FULL);
    }
    return rt;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
    /* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...) */
    void *prev = (void *)ctx->args[1];
    void *next = (void *)ctx->args[2];
    __u32 tid = 0, tgid = 0, flags = 0;

    READ_FIELD(tid, prev, OFF_TASK_PID);
    if (tid) {
        READ_FIELD(tgid, prev, OFF_TASK_TGID);
        READ_FIELD(flags, prev, OFF_TASK_FLAGS);
        account_thread(prev, tid, tgid, (flags & PF_EXITING) ? ACCT_EXITING : ACCT_SWITCH);
    }

    __u32 zero = 0;
    struct oncpu *cur = oncpu_now.lookup(&zero);
    if (cur) {
        READ_FIELD(cur->tid, next, OFF_TASK_PID);
        READ_FIELD(cur->tgid, next, OFF_TASK_TGID);
        READ_FIELD(cur->rt_in, next, OFF_TASK_SUM_EXEC_RUNTIME);
        cur->since_ns = bpf_ktime_get_boot_ns();
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    void *task = (void *)bpf_get_current_task();
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)pid_tgid, tgid = pid_tgid >> 32;

    /* Every thread: fold its final runtime in and forget it. */
    __u64 final_rt = account_thread(task, tid, tgid, ACCT_FINAL);
    thread_rt.delete(&tid);
    if (!args->group_dead)
        return 0; /* a thread, not the process */

    struct exit_event e = {};
    fill_header(&e.h, EV_EXIT, task);
    if (!CAPTURE_KTHREADS && (e.h.flags & F_KTHREAD)) {
        cpu_ns.delete(&tgid);
        return 0;
    }
    __u64 uid_gid = bpf_get_current_uid_gid();
    e.h.uid = (__u32)uid_gid;
    e.h.gid = uid_gid >> 32;
    e.h.cgroup_id = bpf_get_current_cgroup_id();
    /* The leader's comm: a thread may have renamed itself. */
    void *leader = task_ptr(task, OFF_TASK_GROUP_LEADER);
    if (leader)
        bpf_probe_read_kernel(&e.h.comm, sizeof(e.h.comm), leader + OFF_TASK_COMM);
    READ_FIELD(e.exit_code, task, OFF_TASK_EXIT_CODE);

    __u64 *total = cpu_ns.lookup(&tgid);
    if (total) {
        e.cpu_ns = *total;
    } else {
        /* Never switched out since the agent started: this thread's
         * runtime (as folded above) is the whole process's. */
        e.cpu_ns = final_rt;
    }
    cpu_ns.delete(&tgid);

    /* sched_process_exit fires before exit_mm() on this kernel, so the mm
     * is still attached on the last thread. */
    void *mm = task_ptr(task, OFF_TASK_MM);
    if (mm) {
        __u64 hiwater = 0, now = mm_rss_pages(mm);
        READ_FIELD(hiwater, mm, OFF_MM_HIWATER_RSS);
        e.peak_rss_pages = hiwater > now ? hiwater : now;
    } else {
        e.h.flags |= F_NO_MM;
    }

    if (events.ringbuf_output(&e, sizeof(e), wakeup_flag()) != 0) {
        struct exit_key k = {.pid = e.h.pid, .start_ns = e.h.start_ns};
        e.h.flags |= F_FROM_OVERFLOW;
        if (exit_overflow.update(&k, &e) == 0)
            count(ST_EXIT_PARKED);
        else
            count(ST_LOST_EXIT);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(mark_victim)
{
    /* TP_PROTO(struct task_struct *task, uid_t uid): runs in the context of
     * the allocating task, not the victim, so everything is read from the
     * victim's task_struct. */
    void *victim = (void *)ctx->args[0];
    struct oom_event *e = events.ringbuf_reserve(sizeof(struct oom_event));
    if (!e) {
        count(ST_LOST_OOM);
        return 0;
    }
    fill_header(&e->h, EV_OOM, victim);
    e->h.uid = (__u32)ctx->args[1];
    e->h.gid = 0;
    e->h.cgroup_id = 0; /* resolved from the process table in user space */
    void *mm = task_ptr(victim, OFF_TASK_MM);
    e->rss_pages = mm ? mm_rss_pages(mm) : 0;
    if (!mm)
        e->h.flags |= F_NO_MM;
    events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
    return 0;
}
