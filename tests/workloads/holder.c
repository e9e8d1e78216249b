/* holder N: forks N children that sleep until killed, prints "ready", then
 * waits; killing the holder's process group ends them all. Used to put
 * thousands of live processes on the host. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 71; }
        if (c == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* die with the holder */
            for (;;) pause();
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
