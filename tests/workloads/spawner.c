/* Spawns short-lived processes as fast as the machine allows.
 *
 *   spawner COUNT WORKERS CHILD [TAG]
 *
 * WORKERS processes each fork+exec their share of COUNT children running
 * CHILD with argv {CHILD, TAG, INDEX, OUTCOME} and wait for each. OUTCOME
 * cycles through exit statuses 0..5 and deaths by SIGKILL, SIGTERM and
 * SIGSEGV. For every child one line goes to stdout after it was reaped:
 *   <pid> <ppid> <index> <outcome> <wait status>
 * so a test can check what an observer reported against the truth.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *OUTCOMES[] = {"e0", "e1", "e2", "e3", "e4", "e5", "s9", "s15", "s11"};
#define N_OUTCOMES (sizeof(OUTCOMES) / sizeof(OUTCOMES[0]))

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s COUNT WORKERS CHILD [TAG]\n", argv[0]);
        return 64;
    }
    long count = atol(argv[1]);
    int workers = atoi(argv[2]);
    const char *child = argv[3];
    const char *tag = argc > 4 ? argv[4] : "spawn";
    for (int w = 0; w < workers; w++) {
        pid_t wp = fork();
        if (wp < 0) { perror("fork"); return 71; }
        if (wp == 0) {
            pid_t me = getpid();
            for (long i = w; i < count; i += workers) {
                char idx[32];
                const char *outcome = OUTCOMES[i % N_OUTCOMES];
                snprintf(idx, sizeof(idx), "%ld", i);
                pid_t c = fork();
                if (c < 0) { perror("fork"); _exit(71); }
                if (c == 0) {
                    execl(child, child, tag, idx, outcome, (char *)NULL);
                    _exit(127);
                }
                int status = 0;
                waitpid(c, &status, 0);
                /* One write() per line: atomic even with both workers
                 * writing to the same pipe or file. */
                char line[96];
                int n = snprintf(line, sizeof(line), "%d %d %ld %s %d\n", c, me, i, outcome, status);
                if (write(1, line, n) != n) _exit(74);
            }
            _exit(0);
        }
    }
    int status, rc = 0;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status)) rc = 1;
    return rc;
}
