/* leaker MB_PER_S SECONDS: allocates and touches MB_PER_S MiB every second
 * (in ten steps) for SECONDS seconds, then sleeps until killed. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rate = argc > 1 ? atoi(argv[1]) : 20;
    int seconds = argc > 2 ? atoi(argv[2]) : 30;
    size_t step = (size_t)rate * 1024 * 1024 / 10;
    struct timespec tick = {0, 100 * 1000 * 1000};
    for (int i = 0; i < seconds * 10; i++) {
        char *p = malloc(step);
        if (!p) return 71;
        memset(p, 1, step);
        nanosleep(&tick, NULL);
    }
    for (;;) pause();
}
