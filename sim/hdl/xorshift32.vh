// One step of Marsaglia's xorshift32 (shifts 13, 17, 5): the pseudo-random source of every
// HDL model that pauses at random (stream_harness.vh, and random_pauses.vh for the HBM and
// ring-link models). Included inside a module.
    function [31:0] xorshift(input [31:0] x);
        reg [31:0] y;
        begin
            y = x ^ (x << 13);
            y = y ^ (y >> 17);
            xorshift = y ^ (y << 5);
        end
    endfunction
