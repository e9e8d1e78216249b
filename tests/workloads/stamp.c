/* stamp TAG INDEX: prints "<INDEX> <pid> <CLOCK_REALTIME ns at start>" and exits.
 * Lets a benchmark measure how long the agent takes to report an exec. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("%s %d %lld\n", argc > 2 ? argv[2] : "0", (int)getpid(),
           (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    return 0;
}
