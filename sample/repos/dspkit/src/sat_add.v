// dk_sat_add: signed saturating adder.
// Adds two W-bit two's-complement numbers. When the true sum does not fit
// in W bits the result clamps to the largest positive or the most negative
// value instead of wrapping, and overflow is raised for that cycle.
module dk_sat_add #(
    parameter W = 16
) (
    input  signed [W-1:0] a,
    input  signed [W-1:0] b,
    output signed [W-1:0] y,
    output                overflow
);
    wire signed [W:0] sum = {a[W-1], a} + {b[W-1], b};

    wire pos_ovf = (sum[W:W-1] == 2'b01);
    wire neg_ovf = (sum[W:W-1] == 2'b10);

    assign overflow = pos_ovf | neg_ovf;
    assign y = pos_ovf ? {1'b0, {(W-1){1'b1}}} :
               neg_ovf ? {1'b1, {(W-1){1'b0}}} :
               sum[W-1:0];
endmodule
