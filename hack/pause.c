/* The pod sandbox's "pause" process for the test image: sleep until told to stop.
 * Built statically so the image needs nothing else. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) pause();
}
