/* fdhog PER_SECOND MAX: sets the fd soft limit to 1024, then opens
 * /dev/null PER_SECOND times a second until MAX fds are open, prints
 * "held N" and waits to be killed. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rate = argc > 1 ? atoi(argv[1]) : 40;
    int max = argc > 2 ? atoi(argv[2]) : 1000;
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = 1024;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) { perror("setrlimit"); return 71; }
    struct timespec gap = {0, 1000000000L / rate};
    int n = 3;
    while (n < max) {
        if (open("/dev/null", O_RDONLY) < 0) { perror("open"); return 1; }
        n++;
        nanosleep(&gap, NULL);
    }
    printf("held %d\n", n);
    fflush(stdout);
    for (;;) pause();
}
