/* Records the kernel programs hand to user space: the kernel<->user contract.
 *
 * otel_linnix/sources/bpf.py decodes exactly these layouts;
 * tests/unit/test_bpf_layout.py compiles this header with the host compiler
 * and checks every offsetof() against the decoder, so the two cannot drift
 * apart silently.
 *
 * All fields are naturally aligned; no implicit padding.
 */
#ifndef LINNIX_EVENTS_H
#define LINNIX_EVENTS_H

#define EV_FORK 1
#define EV_EXEC 2
#define EV_EXIT 3
#define EV_OOM  4

/* header.flags */
#define F_KTHREAD        (1u << 0) /* a kernel thread (PF_KTHREAD) */
#define F_ARGV_TRUNC     (1u << 1) /* argv longer than ARGV_MAX; the last arg is cut */
#define F_FNAME_TRUNC    (1u << 2) /* filename longer than FNAME_MAX */
#define F_ARGV_FAULT     (1u << 3) /* argv could not be read (reported empty) */
#define F_NO_MM          (1u << 4) /* no mm: memory figures unknown */
#define F_FROM_OVERFLOW  (1u << 5) /* exit delivered through the overflow map */
#define F_ENV_TRUNC      (1u << 6) /* exec: environment longer than ENV_SCAN_MAX and no
                                    * TRACEPARENT in the part scanned */

/* Indices of the per-CPU stats array (summed in user space). */
#define ST_SUBMITTED      0 /* records offered to the ring buffer (written or lost) */
#define ST_LOST_FORK      1 /* ring buffer full: fork record lost */
#define ST_LOST_EXEC      2 /* ring buffer full: exec record lost */
#define ST_EXIT_PARKED    3 /* ring buffer full: exit parked in the overflow map */
#define ST_LOST_EXIT      4 /* ring buffer and overflow map full: exit lost */
#define ST_LOST_OOM       5 /* ring buffer full: OOM-kill record lost */
#define ST_CPU_MAP_FULL   6 /* per-process CPU map full: CPU time not accounted */
#define ST_THREAD_MAP_FULL 7 /* per-thread runtime map full */
#define ST_ARGV_FAULT     8 /* argv read failed (reported empty, flagged) */
#define ST_WAKEUPS        9 /* forced consumer wakeups */
#define ST_ENV_TRUNC     10 /* exec environment longer than the TRACEPARENT scan */
#define ST_COUNT         11

#define COMM_LEN 16

/* The TRACEPARENT value copied at exec: at most TP_COPY bytes (55, a
 * version-00 traceparent, plus one that tells a longer value), never past
 * the value's terminating NUL, so no other environment byte is copied. */
#define TP_COPY 56
#define TP_MAX  64

struct event_header {
    __u32 kind;             /* EV_* */
    __u32 pid;              /* thread-group id */
    __u32 ppid;             /* real parent's thread-group id */
    __u32 uid;
    __u32 gid;
    __u32 flags;            /* F_* */
    __u64 ts_ns;            /* bpf_ktime_get_boot_ns() */
    __u64 start_ns;         /* group leader's start_boottime */
    __u64 parent_start_ns;  /* real parent's group leader's start_boottime */
    __u64 cgroup_id;        /* v2 cgroup inode of the task at the event */
    char comm[COMM_LEN];
};                          /* 72 bytes */

struct fork_event {
    struct event_header h;
    __u64 clone_flags;
};

struct exit_event {
    struct event_header h;
    __u32 exit_code;        /* task->exit_code, wait(2) encoding */
    __u32 _pad;
    __u64 cpu_ns;           /* on-CPU time of all threads (see lifecycle.bpf.c) */
    __u64 peak_rss_pages;   /* max(hiwater_rss, current rss) */
};

struct oom_event {
    struct event_header h;
    __u64 rss_pages;        /* file + anon + shmem pages of the victim */
};

/* Variable length: user space receives offsetof(argv) + argv_len bytes. */
struct exec_event {
    struct event_header h;
    __u32 fname_len;        /* bytes of filename, without the NUL */
    __u32 argv_len;         /* bytes of argv, NUL-separated as in /proc/<pid>/cmdline */
    __u32 tp_len;           /* bytes of traceparent; 0 when the environment has none */
    __u32 _pad;
    char traceparent[TP_MAX]; /* the TRACEPARENT value only (see TP_COPY) */
    char filename[FNAME_MAX];
    char argv[ARGV_MAX];
};

/* Key of the exit overflow map (a process is (pid, start time)). */
struct exit_key {
    __u32 pid;
    __u32 _pad;
    __u64 start_ns;
};

/* What the CPU that last switched holds: lets user space add the slice a
 * long-running task has not yet been switched out of. */
struct oncpu {
    __u32 tgid;
    __u32 tid;
    __u64 since_ns;         /* bpf_ktime_get_boot_ns() at switch-in */
    __u64 rt_in;            /* the thread's sum_exec_runtime at switch-in */
};

#endif
